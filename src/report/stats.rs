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

impl Summary {
    /// The two-sided p-value of a one-sample t-test of a zero mean (for paired differences:
    /// the paired t-test); None for one value. Values all equal give 0 or 1.
    pub fn p_value(&self) -> Option<f64> {
        let std = self.std?;
        if std == 0.0 {
            return Some(if self.mean == 0.0 { 1.0 } else { 0.0 });
        }
        let t = self.mean / (std / (self.n as f64).sqrt());
        let dist = StudentsT::new(0.0, 1.0, (self.n - 1) as f64).expect("n >= 2");
        Some(2.0 * (1.0 - dist.cdf(t.abs())))
    }

    /// About how many values (seeds) a 95% interval needs to exclude zero if the mean and
    /// standard deviation stay as observed: the least n with t(0.975; n-1) s / sqrt(n) <
    /// |mean|, at most 1000; None when the mean is 0 or there is no spread to go by.
    pub fn values_to_resolve(&self) -> Option<usize> {
        let std = self.std.filter(|&s| s > 0.0)?;
        if self.mean == 0.0 {
            return None;
        }
        (2..=1000).find(|&n| t_975(n - 1) * std / (n as f64).sqrt() < self.mean.abs())
    }
}

/// Holm's step-down adjustment of p-values (Holm, 1979): the i-th smallest of m is multiplied
/// by m - i + 1 (i from 1), then made non-decreasing in that order and capped at 1. Rejecting
/// where the adjusted value is below alpha keeps the family-wise error rate at alpha.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut adjusted = vec![0.0; m];
    let mut running = 0.0_f64;
    for (i, &index) in order.iter().enumerate() {
        running = running.max(((m - i) as f64 * p[index]).min(1.0));
        adjusted[index] = running;
    }
    adjusted
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

    /// Holm on p-values with a known adjustment: sorted 0.01, 0.02, 0.03, 0.2 times 4, 3, 2,
    /// 1 give 0.04, 0.06, 0.06 (raised to keep the order), 0.2.
    #[test]
    fn holm_adjusts_known_p_values() {
        let adjusted = holm(&[0.03, 0.2, 0.01, 0.02]);
        let expected = [0.06, 0.2, 0.04, 0.06];
        for (a, e) in adjusted.iter().zip(expected) {
            assert!((a - e).abs() < 1e-12, "{adjusted:?}");
        }
        assert_eq!(holm(&[0.5, 0.6]), vec![1.0, 1.0]);
        assert!(holm(&[]).is_empty());
    }

    /// The paired t-test's p-value where a 95% interval just excludes zero is just below 0.05;
    /// against SciPy's ttest_1samp([0.1, 0.2, 0.3], 0): t = 3.4641, df 2, p = 0.07418.
    #[test]
    fn p_values_agree_with_the_intervals_and_r() {
        let s = Summary::of(&[0.1, 0.2, 0.3]).unwrap();
        assert!((s.p_value().unwrap() - 0.07418).abs() < 1e-5);
        assert!(!s.excludes_zero());
        let s = Summary::of(&[0.1, 0.2, 0.3, 0.2, 0.25]).unwrap();
        assert_eq!(s.excludes_zero(), s.p_value().unwrap() < 0.05);
        // Needs more values: with this mean and spread, 4 seeds still include zero, 5 do not.
        let s = Summary::of(&[0.1, 0.2, 0.3]).unwrap();
        let n = s.values_to_resolve().unwrap();
        assert!(t_975(n - 1) * 0.1 / (n as f64).sqrt() < 0.2);
        assert!(t_975(n - 2) * 0.1 / ((n - 1) as f64).sqrt() >= 0.2);
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
