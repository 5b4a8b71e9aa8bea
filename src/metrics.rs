//! Classification metrics beyond accuracy, from each eval example's true class, predicted
//! class and confidence (its top softmax probability): the confusion matrix, each class's
//! accuracy, macro-F1 as scikit-learn computes it, and the expected calibration error.

use serde::{Deserialize, Serialize};

/// Equal-width confidence bins of the expected calibration error (Guo et al., 2017).
pub const ECE_BINS: usize = 15;

/// What an evaluation measured besides accuracy and loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Mean F1 over the classes that occur as a true or a predicted class (scikit-learn's
    /// `f1_score(average="macro")`; a class never predicted has precision 0).
    pub macro_f1: f64,
    /// Expected calibration error over 15 equal-width confidence bins: the example-weighted
    /// mean of |accuracy - mean confidence| per bin.
    pub ece: f64,
    /// Each class's accuracy (the fraction of its examples classified as it, its recall);
    /// None for a class with no eval example.
    pub per_class_accuracy: Vec<Option<f64>>,
    /// `confusion[true][predicted]`: example counts.
    pub confusion: Vec<Vec<u32>>,
}

impl Metrics {
    /// The metrics of `classes` classes from parallel lists of true classes, predictions and
    /// confidences.
    pub fn of(truth: &[u32], predicted: &[u32], confidence: &[f32], classes: usize) -> Self {
        let mut confusion = vec![vec![0u32; classes]; classes];
        for (&t, &p) in truth.iter().zip(predicted) {
            confusion[t as usize][p as usize] += 1;
        }
        let row = |c: usize| confusion[c].iter().sum::<u32>();
        let column = |c: usize| confusion.iter().map(|r| r[c]).sum::<u32>();
        let ratio = |a: u32, b: u32| {
            if b == 0 {
                0.0
            } else {
                f64::from(a) / f64::from(b)
            }
        };
        let per_class_accuracy = (0..classes)
            .map(|c| (row(c) > 0).then(|| ratio(confusion[c][c], row(c))))
            .collect();
        let f1s: Vec<f64> = (0..classes)
            .filter(|&c| row(c) + column(c) > 0)
            .map(|c| {
                let (precision, recall) = (
                    ratio(confusion[c][c], column(c)),
                    ratio(confusion[c][c], row(c)),
                );
                match precision + recall {
                    0.0 => 0.0,
                    sum => 2.0 * precision * recall / sum,
                }
            })
            .collect();
        let macro_f1 = f1s.iter().sum::<f64>() / f1s.len().max(1) as f64;
        Metrics {
            macro_f1,
            ece: expected_calibration_error(truth, predicted, confidence),
            per_class_accuracy,
            confusion,
        }
    }
}

/// Guo et al.'s ECE: bins `(i/15, (i+1)/15]` of confidence (a confidence of 0 joins the first).
fn expected_calibration_error(truth: &[u32], predicted: &[u32], confidence: &[f32]) -> f64 {
    let mut bins = [(0usize, 0f64, 0f64); ECE_BINS]; // (examples, hits, confidence sum)
    for ((&t, &p), &c) in truth.iter().zip(predicted).zip(confidence) {
        let c = f64::from(c).clamp(0.0, 1.0);
        let bin = ((c * ECE_BINS as f64).ceil() as usize).clamp(1, ECE_BINS) - 1;
        bins[bin].0 += 1;
        bins[bin].1 += f64::from(u8::from(t == p));
        bins[bin].2 += c;
    }
    let total = truth.len().max(1) as f64;
    bins.iter()
        .filter(|b| b.0 > 0)
        .map(|&(_, hits, confidence)| (hits - confidence).abs() / total)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// scikit-learn 1.9.1 (the one in .venv/mlflow): f1_score([0,0,0,1,1,2,2,2,2],
    /// [0,1,0,1,2,2,2,0,1], average="macro") = 0.546031746031746; by hand: class 0 p=2/3 r=2/3 F1=0.6667, class 1 p=1/3 r=1/2 F1=0.4,
    /// class 2 p=2/3 r=2/4 F1=0.5714.
    #[test]
    fn macro_f1_and_class_accuracies_match_scikit_learn() {
        let truth = [0, 0, 0, 1, 1, 2, 2, 2, 2];
        let predicted = [0, 1, 0, 1, 2, 2, 2, 0, 1];
        let metrics = Metrics::of(&truth, &predicted, &[0.9; 9], 4);
        let expected = (2.0 / 3.0 + 0.4 + 4.0 / 7.0) / 3.0;
        assert!(
            (metrics.macro_f1 - expected).abs() < 1e-12,
            "{}",
            metrics.macro_f1
        );
        assert!((metrics.macro_f1 - 0.546031746031746).abs() < 1e-12);
        assert_eq!(
            metrics.per_class_accuracy,
            [Some(2.0 / 3.0), Some(0.5), Some(0.5), None]
        );
        assert_eq!(metrics.confusion[2], [1, 1, 2, 0]);
        assert_eq!(metrics.confusion[3], [0, 0, 0, 0]);
    }

    #[test]
    fn a_class_never_predicted_scores_zero_f1() {
        let metrics = Metrics::of(&[0, 1], &[0, 0], &[1.0, 1.0], 2);
        // class 0: p=1/2 r=1 F1=2/3; class 1: p=0 (never predicted) r=0 F1=0. scikit-learn:
        // f1_score([0,1], [0,0], average="macro") = 0.3333.
        assert!((metrics.macro_f1 - 1.0 / 3.0).abs() < 1e-12);
    }

    /// Two bins used: confidences 0.95 (bin 15) with 3 of 4 right, 0.5 (bin 8) with 1 of 2:
    /// ECE = 4/6 * |0.75 - 0.95| + 2/6 * |0.5 - 0.5| = 0.1333.
    #[test]
    fn ece_is_the_weighted_gap_per_bin() {
        let truth = [0, 0, 0, 0, 1, 1];
        let predicted = [0, 0, 0, 1, 1, 0];
        let confidence = [0.95, 0.95, 0.95, 0.95, 0.5, 0.5];
        let metrics = Metrics::of(&truth, &predicted, &confidence, 2);
        assert!((metrics.ece - 0.8 / 6.0).abs() < 1e-6, "{}", metrics.ece);
        // Perfectly calibrated: right exactly as often as confident.
        let calibrated = Metrics::of(&[0, 0], &[0, 1], &[0.5, 0.5], 2);
        assert!(calibrated.ece.abs() < 1e-12);
    }
}
