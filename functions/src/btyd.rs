//! "Buy till you die" models (functions.md §I), exactly as lifetimes 0.11 computes them:
//! the BG/NBD model of repeat purchases (Fader, Hardie & Lee 2005) and the Gamma-Gamma model
//! of spend per purchase, their maximum-likelihood fits, and the predictions built on them
//! (expected purchases, P(alive), customer lifetime value). Pure numerics; the SQL functions
//! are in [`crate::ltv`].

use crate::optimize::{Minimum, bfgs};
use crate::special::{digamma, ln_beta, ln_gamma, ln_hyp2f1};

/// Fitted BG/NBD parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BgNbd {
    /// Shape of the gamma purchase-rate heterogeneity.
    pub r: f64,
    /// Scale of the gamma purchase-rate heterogeneity (in the data's time unit).
    pub alpha: f64,
    /// Beta dropout-probability parameter a.
    pub a: f64,
    /// Beta dropout-probability parameter b.
    pub b: f64,
}

/// Fitted Gamma-Gamma parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GammaGamma {
    /// Shape of the per-transaction spend.
    pub p: f64,
    /// Shape of the customers' spend-scale heterogeneity.
    pub q: f64,
    /// Scale of the customers' spend-scale heterogeneity.
    pub v: f64,
}

/// One customer's repeat-purchase summary.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Customer {
    /// Repeat purchases (periods with a purchase, minus the first).
    pub frequency: f64,
    /// Time from the first to the last purchase.
    pub recency: f64,
    /// Time from the first purchase to the end of observation.
    pub t: f64,
    /// How many customers this row stands for.
    pub weight: f64,
}

/// A fit's outcome.
#[derive(Debug, Clone)]
pub struct Fit<P> {
    /// The parameters.
    pub params: P,
    /// The minimised objective: mean negative log-likelihood (time scaled so that the
    /// largest T is 1, as lifetimes does) plus the penalty.
    pub neg_ll: f64,
    /// Whether the optimiser converged.
    pub converged: bool,
    /// Optimiser iterations.
    pub iterations: usize,
}

/// Why input cannot be fitted (lifetimes' `_check_inputs`).
pub fn check_customer(c: &Customer) -> Result<(), String> {
    if c.frequency < 0.0 || c.frequency.fract() != 0.0 || !c.frequency.is_finite() {
        return Err(format!(
            "frequency must be a non-negative integer, not {}",
            c.frequency
        ));
    }
    if c.recency < 0.0 || !c.recency.is_finite() {
        return Err(format!("recency must not be negative ({})", c.recency));
    }
    if !(c.t >= 0.0 && c.t.is_finite()) {
        return Err(format!("T must not be negative ({})", c.t));
    }
    if c.recency > c.t {
        return Err(format!(
            "recency ({}) must not be larger than T ({})",
            c.recency, c.t
        ));
    }
    if c.frequency == 0.0 && c.recency != 0.0 {
        return Err(format!(
            "recency must be 0 when frequency is 0 (recency {})",
            c.recency
        ));
    }
    if !(c.weight > 0.0 && c.weight.is_finite()) {
        return Err(format!("weight must be positive ({})", c.weight));
    }
    Ok(())
}

/// lifetimes' starting point: every log-parameter 0.1.
const START: f64 = 0.1;
/// Most BFGS iterations.
const MAX_ITER: usize = 2000;

/// Maximum-likelihood BG/NBD fit (lifetimes `BetaGeoFitter.fit`): log-parameters, time
/// scaled by 1 / max(T), BFGS from 0.1, an L2 `penalizer` on the parameters.
pub fn fit_bgnbd(customers: &[Customer], penalizer: f64, tol: f64) -> Option<Fit<BgNbd>> {
    let max_t = customers.iter().map(|c| c.t).fold(0.0f64, f64::max);
    if customers.is_empty() || max_t <= 0.0 {
        return None;
    }
    let scale = 1.0 / max_t;
    // The terms that depend on x alone are computed once per distinct x.
    let mut xs: Vec<f64> = customers.iter().map(|c| c.frequency).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    let rows: Vec<(usize, f64, f64, f64)> = customers
        .iter()
        .map(|c| {
            let k = xs
                .binary_search_by(|v| v.total_cmp(&c.frequency))
                .unwrap_or(0);
            (k, c.recency * scale, c.t * scale, c.weight)
        })
        .collect();
    let total_weight: f64 = rows.iter().map(|r| r.3).sum();
    let objective = |theta: &[f64]| -> (f64, Vec<f64>) {
        let (r, alpha, a, b) = (
            theta[0].exp(),
            theta[1].exp(),
            theta[2].exp(),
            theta[3].exp(),
        );
        let (lg_r, lg_ab, lg_b) = (ln_gamma(r), ln_gamma(a + b), ln_gamma(b));
        let (dg_r, dg_ab, dg_b) = (digamma(r), digamma(a + b), digamma(b));
        // Per distinct x: (A1 + A2 without r ln α, d/dr, d/da, d/db of those).
        let per_x: Vec<[f64; 4]> = xs
            .iter()
            .map(|&x| {
                [
                    ln_gamma(r + x) - lg_r + lg_ab + ln_gamma(b + x) - lg_b - ln_gamma(a + b + x),
                    digamma(r + x) - dg_r,
                    dg_ab - digamma(a + b + x),
                    dg_ab + digamma(b + x) - dg_b - digamma(a + b + x),
                ]
            })
            .collect();
        let (ln_alpha, ln_a) = (alpha.ln(), a.ln());
        let mut ll = 0.0;
        let mut g = [0.0f64; 4];
        for &(k, tx, t, w) in &rows {
            let x = xs[k];
            let px = &per_x[k];
            let rx = r + x;
            let (l_t, l_tx) = ((alpha + t).ln(), (alpha + tx).ln());
            let a3 = -rx * l_t;
            let (lse, p3, p4, bx) = if x > 0.0 {
                let bx = b + x - 1.0;
                let a4 = ln_a - bx.ln() - rx * l_tx;
                let m = a3.max(a4);
                let lse = m + ((a3 - m).exp() + (a4 - m).exp()).ln();
                (lse, (a3 - lse).exp(), (a4 - lse).exp(), bx)
            } else {
                (a3, 1.0, 0.0, 1.0)
            };
            ll += w * (px[0] + r * ln_alpha + lse);
            g[0] += w * (px[1] + ln_alpha - p3 * l_t - p4 * l_tx);
            g[1] += w * (r / alpha - p3 * rx / (alpha + t) - p4 * rx / (alpha + tx));
            g[2] += w * (px[2] + p4 / a);
            g[3] += w * (px[3] - p4 / bx);
        }
        let params = [r, alpha, a, b];
        let penalty: f64 = params.iter().map(|p| p * p).sum::<f64>() * penalizer;
        let value = -ll / total_weight + penalty;
        let grad = params
            .iter()
            .zip(g)
            .map(|(p, gk)| p * (-gk / total_weight + 2.0 * penalizer * p))
            .collect();
        (value, grad)
    };
    let m: Minimum = bfgs(&objective, &[START; 4], tol, MAX_ITER);
    Some(Fit {
        params: BgNbd {
            r: m.x[0].exp(),
            alpha: m.x[1].exp() / scale,
            a: m.x[2].exp(),
            b: m.x[3].exp(),
        },
        neg_ll: m.value,
        converged: m.converged,
        iterations: m.iterations,
    })
}

/// One customer's spend summary for the Gamma-Gamma fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spender {
    /// Repeat purchases (> 0).
    pub frequency: f64,
    /// Mean spend of the repeat purchases (> 0).
    pub monetary: f64,
    /// How many customers this row stands for.
    pub weight: f64,
}

/// Maximum-likelihood Gamma-Gamma fit (lifetimes `GammaGammaFitter.fit`): log-parameters,
/// BFGS from 0.1, an L2 `penalizer`.
pub fn fit_gamma_gamma(rows: &[Spender], penalizer: f64, tol: f64) -> Option<Fit<GammaGamma>> {
    if rows.is_empty() {
        return None;
    }
    let total_weight: f64 = rows.iter().map(|r| r.weight).sum();
    let logs: Vec<(f64, f64)> = rows
        .iter()
        .map(|s| (s.frequency.ln(), s.monetary.ln()))
        .collect();
    let objective = |theta: &[f64]| -> (f64, Vec<f64>) {
        let (p, q, v) = (theta[0].exp(), theta[1].exp(), theta[2].exp());
        let (lg_q, dg_q, ln_v) = (ln_gamma(q), digamma(q), v.ln());
        let mut ll = 0.0;
        let mut g = [0.0f64; 3];
        for (s, (ln_x, ln_m)) in rows.iter().zip(&logs) {
            let (x, m, w) = (s.frequency, s.monetary, s.weight);
            let (px, l_xmv) = (p * x, (x * m + v).ln());
            ll += w
                * (ln_gamma(px + q) - ln_gamma(px) - lg_q
                    + q * ln_v
                    + (px - 1.0) * ln_m
                    + px * ln_x
                    - (px + q) * l_xmv);
            let dg_pxq = digamma(px + q);
            g[0] += w * x * (dg_pxq - digamma(px) + ln_m + ln_x - l_xmv);
            g[1] += w * (dg_pxq - dg_q + ln_v - l_xmv);
            g[2] += w * (q / v - (px + q) / (x * m + v));
        }
        let params = [p, q, v];
        let penalty: f64 = params.iter().map(|p| p * p).sum::<f64>() * penalizer;
        let grad = params
            .iter()
            .zip(g)
            .map(|(p, gk)| p * (-gk / total_weight + 2.0 * penalizer * p))
            .collect();
        (-ll / total_weight + penalty, grad)
    };
    let m = bfgs(&objective, &[START; 3], tol, MAX_ITER);
    Some(Fit {
        params: GammaGamma {
            p: m.x[0].exp(),
            q: m.x[1].exp(),
            v: m.x[2].exp(),
        },
        neg_ll: m.value,
        converged: m.converged,
        iterations: m.iterations,
    })
}

impl BgNbd {
    /// E[X(t) | x, t_x, T]: expected repeat purchases in the next `t` (lifetimes
    /// `conditional_expected_number_of_purchases_up_to_time`).
    pub fn expected_purchases(&self, t: f64, x: f64, tx: f64, big_t: f64) -> f64 {
        let BgNbd { r, alpha, a, b } = *self;
        if t == 0.0 {
            return 0.0;
        }
        let ln_hyp = ln_hyp2f1(r + x, b + x, a + b + x - 1.0, t / (alpha + big_t + t));
        let first = (a + b + x - 1.0) / (a - 1.0);
        let second = 1.0 - (ln_hyp + (r + x) * ((alpha + big_t) / (alpha + t + big_t)).ln()).exp();
        let denominator = if x > 0.0 {
            1.0 + a / (b + x - 1.0) * ((alpha + big_t) / (alpha + tx)).powf(r + x)
        } else {
            1.0
        };
        first * second / denominator
    }

    /// P(alive | x, t_x, T) (lifetimes `conditional_probability_alive`); exactly 1 when x = 0.
    pub fn p_alive(&self, x: f64, tx: f64, big_t: f64) -> f64 {
        let BgNbd { r, alpha, a, b } = *self;
        if x == 0.0 {
            return 1.0;
        }
        let log_div =
            (r + x) * ((alpha + big_t) / (alpha + tx)).ln() + (a / (b + x.max(1.0) - 1.0)).ln();
        1.0 / (1.0 + log_div.exp())
    }

    /// E[X(t)] for a new customer (lifetimes `expected_number_of_purchases_up_to_time`).
    pub fn expected_purchases_new(&self, t: f64) -> f64 {
        let BgNbd { r, alpha, a, b } = *self;
        if t == 0.0 {
            return 0.0;
        }
        let ln_hyp = ln_hyp2f1(r, b, a + b - 1.0, t / (alpha + t));
        (a + b - 1.0) / (a - 1.0) * (1.0 - (ln_hyp + r * (alpha / (alpha + t)).ln()).exp())
    }

    /// P(X(t) = n) for a new customer (lifetimes `probability_of_n_purchases_up_to_time`).
    pub fn prob_n_purchases(&self, t: f64, n: u32) -> f64 {
        let BgNbd { r, alpha, a, b } = *self;
        let nf = f64::from(n);
        let (ln_share, ln_rest) = ((t / (alpha + t)).ln(), (alpha / (alpha + t)).ln());
        let ln_ab = ln_beta(a, b);
        let first =
            (ln_beta(a, b + nf) - ln_ab + ln_gamma(r + nf) - ln_gamma(r) - ln_gamma(nf + 1.0)
                + r * ln_rest
                + if n > 0 { nf * ln_share } else { 0.0 })
            .exp();
        if n == 0 {
            return first;
        }
        let finite_sum: f64 = (0..n)
            .map(|j| {
                let j = f64::from(j);
                (ln_gamma(r + j) - ln_gamma(r) - ln_gamma(j + 1.0)
                    + if j > 0.0 { j * ln_share } else { 0.0 })
                .exp()
            })
            .sum();
        let second = (ln_beta(a + 1.0, b + nf - 1.0) - ln_ab).exp()
            * (1.0 - (r * ln_rest).exp() * finite_sum);
        first + second
    }
}

impl GammaGamma {
    /// E[M | x, m̄] (lifetimes `conditional_expected_average_profit`): the weight
    /// px / (px + q − 1) on the customer's mean spend, the rest on the population mean
    /// vp / (q − 1) (all of it when x = 0).
    pub fn expected_spend(&self, x: f64, m: f64) -> f64 {
        let GammaGamma { p, q, v } = *self;
        let individual = p * x / (p * x + q - 1.0);
        let population = v * p / (q - 1.0);
        if x == 0.0 {
            return population;
        }
        (1.0 - individual) * population + individual * m
    }
}

/// Periods of the data's time unit in one month (lifetimes' CLV factor).
pub fn month_factor(unit: &str) -> Option<f64> {
    match unit.trim().to_ascii_uppercase().as_str() {
        "D" | "DAY" | "DAYS" => Some(30.0),
        "W" | "WEEK" | "WEEKS" => Some(4.345),
        "M" | "MONTH" | "MONTHS" => Some(1.0),
        "H" | "HOUR" | "HOURS" => Some(720.0),
        _ => None,
    }
}

/// Customer lifetime value over `months` months (lifetimes `_customer_lifetime_value`):
/// Σᵢ E[M] · (E[X(i·f)] − E[X((i−1)·f)]) / (1 + d)^i, f the periods per month.
#[allow(clippy::too_many_arguments)]
pub fn clv(
    bg: &BgNbd,
    gg: &GammaGamma,
    x: f64,
    tx: f64,
    big_t: f64,
    monetary: f64,
    months: u32,
    monthly_discount: f64,
    factor: f64,
) -> f64 {
    let spend = gg.expected_spend(x, monetary);
    let mut total = 0.0;
    let mut previous = 0.0;
    for i in 1..=months {
        let now = bg.expected_purchases(f64::from(i) * factor, x, tx, big_t);
        total += spend * (now - previous) / (1.0 + monthly_discount).powi(i as i32);
        previous = now;
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    /// lifetimes' CDNOW parameters (anchors-journey.md §1.14).
    const CDNOW: BgNbd = BgNbd {
        r: 0.24259,
        alpha: 4.41353,
        a: 0.79289,
        b: 2.42575,
    };

    #[test]
    fn predictions_follow_the_reference_values() {
        // Customer 1 of CDNOW: x=2, t_x=30.43, T=38.86 (weeks).
        let e = CDNOW.expected_purchases(30.0, 2.0, 30.43, 38.86);
        assert!((e - 0.97748).abs() < 5e-4, "{e}");
        let p = CDNOW.p_alive(2.0, 30.43, 38.86);
        assert!((p - 0.72661).abs() < 5e-4, "{p}");
        assert_eq!(CDNOW.p_alive(0.0, 0.0, 38.86), 1.0);
        // The probabilities of n purchases sum to 1.
        let total: f64 = (0..400).map(|n| CDNOW.prob_n_purchases(39.0, n)).sum();
        assert!((total - 1.0).abs() < 1e-6, "{total}");
    }
}
