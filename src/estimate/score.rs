//! Transferability scores of frozen features, computed before any training: LogME (You et
//! al., ICML 2021) and LEEP (Nguyen et al., ICML 2020).

use nalgebra::{DMatrix, DVector, SymmetricEigen};

/// LogME: for each class, the log marginal evidence of a Bayesian linear regression from the
/// features to that class's one-hot target, maximised over the prior precision alpha and the
/// noise precision beta by the paper's fixed-point iteration, divided by the number of
/// examples; the mean over classes. `features` is n rows of d values. Higher is better.
pub fn logme(features: &DMatrix<f64>, labels: &[u32], classes: usize) -> f64 {
    let spectrum = Spectrum::of(features);
    let total: f64 = (0..classes)
        .map(|k| {
            let y = DVector::from_iterator(
                labels.len(),
                labels.iter().map(|&l| f64::from(u8::from(l == k as u32))),
            );
            evidence(&spectrum, &y).0
        })
        .sum();
    total / classes as f64
}

/// The features' singular structure, which is all the evidence needs: the nonzero
/// eigenvalues s_i of F^T F (equally of F F^T) with the left singular vectors u_i, from
/// whichever Gram matrix is smaller (F has more rows than columns or fewer, as when 50
/// examples meet 1280 features).
pub(crate) struct Spectrum {
    /// Nonzero eigenvalues.
    s: Vec<f64>,
    /// Left singular vectors, one column per eigenvalue (n x k).
    u: DMatrix<f64>,
    /// Examples and feature dimensions.
    n: usize,
    d: usize,
}

impl Spectrum {
    pub(crate) fn of(f: &DMatrix<f64>) -> Self {
        let (n, d) = f.shape();
        let (values, vectors, left) = if n >= d {
            let eigen = SymmetricEigen::new(f.transpose() * f);
            (eigen.eigenvalues, eigen.eigenvectors, false)
        } else {
            let eigen = SymmetricEigen::new(f * f.transpose());
            (eigen.eigenvalues, eigen.eigenvectors, true)
        };
        // Eigenvalues below this are rounding noise of zeros.
        let floor = values.iter().fold(0.0_f64, |m, &v| m.max(v)) * 1e-12;
        let kept: Vec<usize> = (0..values.len()).filter(|&i| values[i] > floor).collect();
        let s: Vec<f64> = kept.iter().map(|&i| values[i]).collect();
        let u = DMatrix::from_fn(n, kept.len(), |row, c| {
            let i = kept[c];
            match left {
                true => vectors[(row, i)],
                // u_i = F v_i / sqrt(s_i).
                false => (f.row(row) * vectors.column(i))[(0, 0)] / values[i].sqrt(),
            }
        });
        Spectrum { s, u, n, d }
    }
}

/// The maximised evidence per example for one target `y`, with its (alpha, beta). With
/// q_i = (u_i^T y)^2, everything the fixed point and the evidence need is a sum over the
/// eigenvalues: the posterior mean m = beta (alpha I + beta F^T F)^-1 F^T y has |m|^2 =
/// sum beta^2 s_i q_i / (alpha + beta s_i)^2, and |F m - y|^2 = sum alpha^2 q_i / (alpha +
/// beta s_i)^2 plus the part of |y|^2 outside F's range.
pub(crate) fn evidence(spectrum: &Spectrum, y: &DVector<f64>) -> (f64, f64, f64) {
    let Spectrum { s, u, n, d } = spectrum;
    let (n, d) = (*n as f64, *d as f64);
    let q: Vec<f64> = (u.transpose() * y).iter().map(|p| p * p).collect();
    let outside = (y.norm_squared() - q.iter().sum::<f64>()).max(0.0);
    let fit = |alpha: f64, beta: f64| {
        let (mut m_norm, mut residual) = (0.0, outside);
        for (&s, &q) in s.iter().zip(&q) {
            let denominator = (alpha + beta * s).powi(2);
            m_norm += beta * beta * s * q / denominator;
            residual += alpha * alpha * q / denominator;
        }
        (m_norm, residual)
    };
    let (mut alpha, mut beta) = (1.0_f64, 1.0_f64);
    // The paper's fixed point (MacKay's updates), run until alpha / beta settles. Where the
    // features can fit the target exactly (as many independent features as examples) the
    // evidence rises without bound as beta grows: stop at a noise precision of 1e8 (the
    // reference code stops after 11 rounds instead).
    for _ in 0..100 {
        let gamma: f64 = s.iter().map(|&s| beta * s / (alpha + beta * s)).sum();
        let (m_norm, residual) = fit(alpha, beta);
        let (new_alpha, new_beta) = (
            gamma / m_norm.max(1e-300),
            (n - gamma) / residual.max(1e-300),
        );
        if !(new_alpha.is_finite() && new_beta.is_finite() && new_beta < 1e8) {
            break;
        }
        let settled = ((new_alpha / new_beta) - (alpha / beta)).abs() < 1e-7 * (alpha / beta);
        (alpha, beta) = (new_alpha, new_beta);
        if settled {
            break;
        }
    }
    let (m_norm, residual) = fit(alpha, beta);
    // log det(alpha I + beta F^T F): the zero eigenvalues contribute log alpha each.
    let log_det =
        (d - s.len() as f64) * alpha.ln() + s.iter().map(|&s| (alpha + beta * s).ln()).sum::<f64>();
    let evidence = d / 2.0 * alpha.ln() + n / 2.0 * beta.ln()
        - 0.5 * log_det
        - beta / 2.0 * residual
        - alpha / 2.0 * m_norm
        - n / 2.0 * (2.0 * std::f64::consts::PI).ln();
    (evidence / n, alpha, beta)
}

/// LEEP: the mean log-likelihood of the target labels under the "expected empirical
/// predictor": the source classifier's distribution over its own classes z (`source`, n rows
/// of Z probabilities), mapped to target labels by the empirical P(y | z). At most 0; higher
/// is better.
pub fn leep(source: &DMatrix<f64>, labels: &[u32], classes: usize) -> f64 {
    let (n, z) = source.shape();
    // Joint P(y, z) over the target examples, then P(y | z).
    let mut joint = DMatrix::<f64>::zeros(classes, z);
    for (i, &label) in labels.iter().enumerate() {
        for j in 0..z {
            joint[(label as usize, j)] += source[(i, j)] / n as f64;
        }
    }
    let marginal: Vec<f64> = (0..z).map(|j| joint.column(j).sum()).collect();
    let conditional = DMatrix::from_fn(classes, z, |y, j| {
        if marginal[j] > 0.0 {
            joint[(y, j)] / marginal[j]
        } else {
            0.0
        }
    });
    let total: f64 = (labels.iter().enumerate())
        .map(|(i, &label)| {
            let p: f64 = (0..z)
                .map(|j| conditional[(label as usize, j)] * source[(i, j)])
                .sum();
            p.ln()
        })
        .sum();
    total / n as f64
}

/// Kendall's tau-b rank correlation of paired values (ties counted as SciPy's `kendalltau`
/// counts them); None with fewer than two pairs or no variation.
pub fn kendall_tau(x: &[f64], y: &[f64]) -> Option<f64> {
    let (mut concordant, mut discordant, mut tied_x, mut tied_y) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..x.len() {
        for j in i + 1..x.len() {
            let (dx, dy) = (x[i] - x[j], y[i] - y[j]);
            match (dx == 0.0, dy == 0.0) {
                (true, true) => {}
                (true, false) => tied_x += 1,
                (false, true) => tied_y += 1,
                (false, false) if (dx > 0.0) == (dy > 0.0) => concordant += 1,
                (false, false) => discordant += 1,
            }
        }
    }
    let pairs_x = concordant + discordant + tied_y;
    let pairs_y = concordant + discordant + tied_x;
    (pairs_x > 0 && pairs_y > 0)
        .then(|| (concordant - discordant) as f64 / ((pairs_x as f64) * (pairs_y as f64)).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// log N(y; 0, F F^T / alpha + I / beta): the evidence of the Bayesian linear model
    /// evaluated directly, with a Cholesky factor of the n x n covariance.
    fn direct_evidence(f: &DMatrix<f64>, y: &DVector<f64>, alpha: f64, beta: f64) -> f64 {
        let n = f.nrows();
        let covariance = f * f.transpose() / alpha + DMatrix::identity(n, n) / beta;
        let cholesky = covariance.cholesky().unwrap();
        let log_det: f64 = 2.0 * cholesky.l().diagonal().iter().map(|v| v.ln()).sum::<f64>();
        let solved = cholesky.solve(y);
        -0.5 * (n as f64 * (2.0 * std::f64::consts::PI).ln() + log_det + y.dot(&solved))
    }

    fn data(n: usize, d: usize, signal: f64, seed: u64) -> (DMatrix<f64>, Vec<u32>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let labels: Vec<u32> = (0..n).map(|i| (i % 3) as u32).collect();
        let f = DMatrix::from_fn(n, d, |i, j| {
            let centre = if j % 3 == labels[i] as usize {
                signal
            } else {
                0.0
            };
            centre + rng.random_range(-1.0..1.0)
        });
        (f, labels)
    }

    /// The closed form LogME evaluates at its fixed point is the model's evidence, and the
    /// fixed point is a maximum over (alpha, beta).
    #[test]
    fn logme_is_the_maximised_evidence_of_a_bayesian_linear_model() {
        // More examples than features, and fewer (the Gram matrix of the other side; rank 5,
        // so that the targets cannot be fitted exactly and a maximum exists).
        for (n, d) in [(40, 6), (12, 30)] {
            let (f, labels) = data(n, d.min(5), 1.0, 1);
            let f = f * DMatrix::from_fn(d.min(5), d, |i, j| ((i * 7 + j * 3) % 5) as f64 - 2.0);
            let y = DVector::from_iterator(n, labels.iter().map(|&l| f64::from(u8::from(l == 1))));
            let (per_example, alpha, beta) = evidence(&Spectrum::of(&f), &y);
            let direct = direct_evidence(&f, &y, alpha, beta);
            let closed = per_example * n as f64;
            assert!(
                (closed - direct).abs() < 1e-6,
                "{n}x{d}: {closed} vs {direct}"
            );
            for (da, db) in [
                (1.2, 1.0),
                (0.8, 1.0),
                (1.0, 1.2),
                (1.0, 0.8),
                (1.1, 1.1),
                (0.9, 0.9),
            ] {
                let moved = direct_evidence(&f, &y, alpha * da, beta * db);
                assert!(moved < direct, "{n}x{d}: not a maximum at x{da}, x{db}");
            }
        }
    }

    /// Features that separate the classes score higher than noise.
    #[test]
    fn logme_ranks_informative_features_above_noise() {
        let (informative, labels) = data(60, 9, 2.0, 2);
        let (noise, _) = data(60, 9, 0.0, 3);
        let (a, b) = (logme(&informative, &labels, 3), logme(&noise, &labels, 3));
        assert!(a > b, "{a} vs {b}");
        // As many independent features as examples fit any target: still a finite score.
        let (wide, labels) = data(12, 30, 2.0, 4);
        assert!(logme(&wide, &labels, 3).is_finite());
    }

    /// Against SciPy 1.x `kendalltau` (tau-b) on the same pairs.
    #[test]
    fn kendall_tau_matches_scipy() {
        let tau = |x: &[f64], y: &[f64]| kendall_tau(x, y).unwrap();
        assert!((tau(&[1., 2., 3., 4., 5.], &[3., 4., 1., 2., 5.]) - 0.2).abs() < 1e-12);
        assert!((tau(&[1., 2., 2., 3.], &[1., 3., 2., 2.]) - 0.4).abs() < 1e-12);
        assert_eq!(tau(&[-0.5, -0.2, -0.9, -0.1], &[0.8, 0.85, 0.7, 0.9]), 1.0);
        assert_eq!(kendall_tau(&[1.0], &[2.0]), None);
    }

    /// LEEP on 4 examples, 2 source classes and 2 target classes, by hand: P(y, z) sums the
    /// rows of each label, P(y | z) divides by the column sums.
    #[test]
    fn leep_matches_a_hand_computation() {
        let source = DMatrix::from_row_slice(4, 2, &[0.9, 0.1, 0.8, 0.2, 0.3, 0.7, 0.4, 0.6]);
        let labels = [0, 0, 1, 1];
        // Joint / n: y=0: (1.7, 0.3)/4, y=1: (0.7, 1.3)/4; columns sum to 2.4/4 and 1.6/4.
        let p = |y: usize, z: usize| [[1.7 / 2.4, 0.3 / 1.6], [0.7 / 2.4, 1.3 / 1.6]][y][z];
        let expected = [(0, 0.9, 0.1), (0, 0.8, 0.2), (1, 0.3, 0.7), (1, 0.4, 0.6)]
            .iter()
            .map(|&(y, a, b): &(usize, f64, f64)| (p(y, 0) * a + p(y, 1) * b).ln())
            .sum::<f64>()
            / 4.0;
        assert!((leep(&source, &labels, 2) - expected).abs() < 1e-12);
    }
}
