//! Unconstrained minimisation for the model fits: BFGS with an Armijo backtracking line
//! search and analytic gradients (what `scipy.optimize.minimize` does by default for
//! lifetimes' fitters). Four parameters at most, so dense matrices.

/// The result of a minimisation.
#[derive(Debug, Clone)]
pub struct Minimum {
    /// The arguments at the minimum found.
    pub x: Vec<f64>,
    /// The objective there.
    pub value: f64,
    /// Whether the gradient fell below the tolerance.
    pub converged: bool,
    /// BFGS iterations taken.
    pub iterations: usize,
}

/// An objective: its value and gradient at a point.
pub type Objective<'a> = &'a dyn Fn(&[f64]) -> (f64, Vec<f64>);

/// Minimise `f` (value and gradient) from `x0` until the largest gradient component is
/// below `gtol`, or `max_iter` iterations.
pub fn bfgs(f: Objective<'_>, x0: &[f64], gtol: f64, max_iter: usize) -> Minimum {
    let n = x0.len();
    let mut x = x0.to_vec();
    let (mut fx, mut g) = f(&x);
    let mut h = identity(n);
    let mut first = true;
    let norm = |g: &[f64]| g.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for it in 0..max_iter {
        if !fx.is_finite() || g.iter().any(|v| !v.is_finite()) {
            return Minimum {
                x,
                value: fx,
                converged: false,
                iterations: it,
            };
        }
        if norm(&g) < gtol {
            return Minimum {
                x,
                value: fx,
                converged: true,
                iterations: it,
            };
        }
        let mut p: Vec<f64> = (0..n)
            .map(|i| -(0..n).map(|j| h[i][j] * g[j]).sum::<f64>())
            .collect();
        let mut slope: f64 = p.iter().zip(&g).map(|(a, b)| a * b).sum();
        if slope >= 0.0 {
            // Not a descent direction: restart from steepest descent.
            h = identity(n);
            p = g.iter().map(|v| -v).collect();
            slope = -g.iter().map(|v| v * v).sum::<f64>();
        }
        // Armijo backtracking.
        let mut step = 1.0;
        let mut next = None;
        while step > 1e-20 {
            let xn: Vec<f64> = x.iter().zip(&p).map(|(a, b)| a + step * b).collect();
            let (fnew, gnew) = f(&xn);
            if fnew.is_finite() && fnew <= fx + 1e-4 * step * slope {
                next = Some((xn, fnew, gnew));
                break;
            }
            step *= 0.5;
        }
        let Some((xn, fnew, gnew)) = next else {
            // No progress is possible at this precision.
            let converged = norm(&g) < gtol.max(1e-5);
            return Minimum {
                x,
                value: fx,
                converged,
                iterations: it,
            };
        };
        let s: Vec<f64> = xn.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = gnew.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy: f64 = s.iter().zip(&y).map(|(a, b)| a * b).sum();
        if sy > 1e-300 {
            if first {
                // Scale the first inverse Hessian (Nocedal & Wright eq. 6.20).
                let yy: f64 = y.iter().map(|v| v * v).sum();
                let scale = sy / yy;
                h.iter_mut().enumerate().for_each(|(i, row)| row[i] = scale);
                first = false;
            }
            let rho = 1.0 / sy;
            let hy: Vec<f64> = (0..n)
                .map(|i| (0..n).map(|j| h[i][j] * y[j]).sum())
                .collect();
            let yhy: f64 = y.iter().zip(&hy).map(|(a, b)| a * b).sum();
            for i in 0..n {
                for j in 0..n {
                    h[i][j] += -rho * (hy[i] * s[j] + s[i] * hy[j])
                        + (rho * rho * yhy + rho) * s[i] * s[j];
                }
            }
        }
        x = xn;
        fx = fnew;
        g = gnew;
    }
    let converged = norm(&g) < gtol;
    Minimum {
        x,
        value: fx,
        converged,
        iterations: max_iter,
    }
}

fn identity(n: usize) -> Vec<Vec<f64>> {
    (0..n)
        .map(|i| (0..n).map(|j| f64::from(u8::from(i == j))).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rosenbrock() {
        let f = |x: &[f64]| {
            let (a, b) = (x[0], x[1]);
            (
                (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2),
                vec![
                    -2.0 * (1.0 - a) - 400.0 * a * (b - a * a),
                    200.0 * (b - a * a),
                ],
            )
        };
        let m = bfgs(&f, &[-1.2, 1.0], 1e-9, 1000);
        assert!(m.converged, "{m:?}");
        assert!(
            (m.x[0] - 1.0).abs() < 1e-7 && (m.x[1] - 1.0).abs() < 1e-7,
            "{m:?}"
        );
    }
}
