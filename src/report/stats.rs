//! Small-sample statistics over seeds: mean, sample standard deviation, and the half-width
//! of a 95% confidence interval from Student's t distribution.

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};

/// Summary of a few values (e.g. one accuracy per seed).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// How many values.
    pub n: usize,
    /// Their mean.
    pub mean: f64,
    /// Sample standard deviation (n - 1); absent for one value.
    pub std: Option<f64>,
    /// Half-width of the 95% confidence interval of the mean; absent for one value.
    pub ci95: Option<f64>,
}

impl Summary {
    /// The summary of `values`, or None when there are none.
    pub fn of(values: &[f64]) -> Option<Self> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = (n > 1).then(|| {
            (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
        });
        let ci95 = std.map(|s| t_975(n - 1) * s / (n as f64).sqrt());
        Some(Summary { n, mean, std, ci95 })
    }

    /// The interval, when there is one.
    pub fn interval(&self) -> Option<(f64, f64)> {
        self.ci95.map(|h| (self.mean - h, self.mean + h))
    }

    /// Whether the 95% interval lies wholly above or below zero.
    pub fn excludes_zero(&self) -> bool {
        self.interval()
            .is_some_and(|(low, high)| low > 0.0 || high < 0.0)
    }

    /// Whether two intervals overlap (a summary without one overlaps only its equal mean).
    pub fn overlaps(&self, other: &Summary) -> bool {
        let (a, b) = (
            self.interval().unwrap_or((self.mean, self.mean)),
            other.interval().unwrap_or((other.mean, other.mean)),
        );
        a.0 <= b.1 && b.0 <= a.1
    }
}

/// The 97.5% quantile of Student's t with `df` degrees of freedom (df >= 1).
fn t_975(df: usize) -> f64 {
    StudentsT::new(0.0, 1.0, df as f64)
        .expect("df >= 1 is a valid t distribution")
        .inverse_cdf(0.975)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_the_tables() {
        // Standard tables: t(0.975; 1) = 12.706, t(0.975; 2) = 4.303, t(0.975; 30) = 2.042.
        assert!((t_975(1) - 12.706).abs() < 1e-3);
        assert!((t_975(2) - 4.303).abs() < 1e-3);
        assert!((t_975(30) - 2.042).abs() < 1e-3);
    }

    #[test]
    fn summarises_seeds() {
        let s = Summary::of(&[0.5, 0.6, 0.7]).unwrap();
        assert!((s.mean - 0.6).abs() < 1e-12);
        assert!((s.std.unwrap() - 0.1).abs() < 1e-12);
        // 4.303 * 0.1 / sqrt(3)
        assert!((s.ci95.unwrap() - 0.248_43).abs() < 1e-4);
        assert!(s.excludes_zero());
        let one = Summary::of(&[0.5]).unwrap();
        assert_eq!((one.std, one.ci95), (None, None));
        assert!(!one.excludes_zero());
        assert!(Summary::of(&[]).is_none());
        let around_zero = Summary::of(&[-0.1, 0.1, 0.05]).unwrap();
        assert!(!around_zero.excludes_zero());
        assert!(s.overlaps(&Summary::of(&[0.8, 0.9, 0.85]).unwrap()));
        assert!(!s.overlaps(&Summary::of(&[0.99, 0.991, 0.992]).unwrap()));
    }
}
