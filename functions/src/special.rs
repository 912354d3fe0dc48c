//! Special functions for the lifetime-value models: log-gamma (libm), digamma, and the
//! logarithm of the Gauss hypergeometric function ₂F₁ on `0 <= z < 1` with positive
//! parameters (the BG/NBD expectations).

/// ln Γ(x) for x > 0.
pub fn ln_gamma(x: f64) -> f64 {
    libm::lgamma(x)
}

/// ln B(a, b).
pub fn ln_beta(a: f64, b: f64) -> f64 {
    ln_gamma(a) + ln_gamma(b) - ln_gamma(a + b)
}

/// ψ(x) = d/dx ln Γ(x) for x > 0: the recurrence ψ(x) = ψ(x + 1) − 1/x up to x ≥ 10, then
/// the asymptotic series (absolute error below 1e-15 there).
pub fn digamma(mut x: f64) -> f64 {
    if !x.is_finite() || x <= 0.0 {
        return f64::NAN;
    }
    let mut acc = 0.0;
    while x < 10.0 {
        acc -= 1.0 / x;
        x += 1.0;
    }
    let x2 = 1.0 / (x * x);
    // Bernoulli terms B2k / (2k x^2k), k = 1..7.
    let series = x2
        * (1.0 / 12.0
            - x2 * (1.0 / 120.0
                - x2 * (1.0 / 252.0
                    - x2 * (1.0 / 240.0
                        - x2 * (1.0 / 132.0 - x2 * (691.0 / 32760.0 - x2 / 12.0))))));
    acc + x.ln() - 0.5 / x - series
}

/// Most series terms summed by [`ln_hyp2f1`] (z = 0.9999 needs about 400,000).
const MAX_TERMS: usize = 20_000_000;

/// ln ₂F₁(a, b; c; z) for a, b, c > 0 and 0 <= z < 1, by the hypergeometric series. All
/// terms are positive, so there is no cancellation; the sum is rescaled as it grows, so large
/// values (where scipy's `hyp2f1` overflows to inf) stay finite in the logarithm. NaN outside
/// the domain.
pub fn ln_hyp2f1(a: f64, b: f64, c: f64, z: f64) -> f64 {
    if !(a > 0.0 && b > 0.0 && c > 0.0 && (0.0..1.0).contains(&z)) {
        return f64::NAN;
    }
    if z == 0.0 {
        return 0.0;
    }
    const BIG: f64 = 1e200;
    let (mut term, mut sum, mut scale) = (1.0f64, 1.0f64, 0.0f64);
    for n in 0..MAX_TERMS {
        let k = n as f64;
        let ratio = (a + k) * (b + k) / ((c + k) * (k + 1.0)) * z;
        term *= ratio;
        sum += term;
        if sum > BIG {
            sum /= BIG;
            term /= BIG;
            scale += BIG.ln();
        }
        // Once the ratio is below 1 and falling towards z, the tail is at most
        // term · q / (1 − q) with q the larger of the two.
        let q = ratio.max(z);
        if ratio < 1.0 && term * q / (1.0 - q) < sum * 1e-17 {
            return sum.ln() + scale;
        }
    }
    f64::NAN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digamma_known_values() {
        let euler = 0.577_215_664_901_532_9;
        assert!((digamma(1.0) + euler).abs() < 1e-14);
        assert!((digamma(0.5) - (-euler - 2.0 * 2f64.ln())).abs() < 1e-14);
        // ψ(x) against the derivative of lgamma.
        for x in [0.01, 0.3, 2.5, 17.0, 1234.5] {
            let h = 1e-6 * x;
            let numeric = (ln_gamma(x + h) - ln_gamma(x - h)) / (2.0 * h);
            assert!(
                (digamma(x) - numeric).abs() < 1e-6 * (1.0 + digamma(x).abs()),
                "{x}"
            );
        }
    }

    #[test]
    fn hyp2f1_closed_forms() {
        // ₂F₁(1, 1; 2; z) = −ln(1 − z) / z.
        for z in [0.1, 0.5, 0.9, 0.999] {
            let want = (-(1.0f64 - z).ln() / z).ln();
            assert!((ln_hyp2f1(1.0, 1.0, 2.0, z) - want).abs() < 1e-13, "{z}");
        }
        // ₂F₁(a, b; b; z) = (1 − z)^−a, large enough to overflow f64 without the rescaling.
        let (a, z) = (400.0, 0.99);
        assert!((ln_hyp2f1(a, 3.0, 3.0, z) - (-a * (1.0f64 - z).ln())).abs() < 1e-9);
        assert!(ln_hyp2f1(1.0, 1.0, 2.0, 1.0).is_nan());
    }
}
