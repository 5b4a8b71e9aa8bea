//! The `auto_depth` strategy: choose the freeze depth by successive halving (Jamieson and
//! Talwalkar, 2016) instead of sweeping it, then train the chosen depth with the full budget.
//!
//! Candidates are every depth d = 0..L of a family (`train.auto_depth.family`): by default
//! partial freezing, f = d with all L blocks transferred, from fine-tuning (d = 0) to a frozen
//! feature extractor (d = L); or the prefix families, t = f = d (`prefix_frozen`) or t = d,
//! f = 0 (`prefix_finetune`), from scratch (d = 0) to all L blocks transferred. A seeded fifth of each class's training
//! examples is held out (never the eval data). Rung r of R = ceil(log2(L + 1)) trains every
//! remaining candidate from the same start for `steps / 2^(R - r)` steps on the rest, scores
//! it on the held-out examples and keeps the better half (ties: the deeper, which is
//! cheaper when it freezes); the last one left trains for the full `steps` on every training example. With
//! `train.auto_depth: {order: logme}` LogME of the source's features after each block 1..L keeps
//! the better half of those depths (and d = 0, which it cannot score) before the first rung.

use serde::{Deserialize, Serialize};

/// The fraction of each class's training examples that scores the candidates.
pub const HOLDOUT: f64 = 0.2;

/// How the depth was chosen, kept in the trial's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoDepth {
    /// The depth d chosen in the family searched, trained with the full budget.
    pub chosen: usize,
    /// Each rung's steps and its candidates' held-out accuracies.
    pub rungs: Vec<Rung>,
    /// Optimiser steps spent in all: the rungs' and the final training's.
    pub total_steps: usize,
    /// Training examples held out to score the candidates.
    pub holdout_examples: usize,
    /// With `order: logme`: each depth 1..L's LogME, which chose the first rung's candidates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logme: Option<Vec<(usize, f64)>>,
}

/// One rung of successive halving.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rung {
    /// Steps each candidate trained.
    pub steps: usize,
    /// (depth d, held-out accuracy), in the order tried.
    pub scores: Vec<(usize, f64)>,
}

/// Steps per rung for `candidates` candidates and a full budget of `steps`: halving from the
/// last rung (steps / 2) down, one rung per halving needed to leave one candidate; at least 1.
pub fn rung_steps(candidates: usize, steps: usize) -> Vec<usize> {
    let rungs = candidates.next_power_of_two().trailing_zeros() as usize;
    (0..rungs).map(|r| (steps >> (rungs - r)).max(1)).collect()
}

/// The better half (rounded up) of a rung's candidates: highest score first, the deeper
/// first among equal scores.
pub fn survivors(scores: &[(usize, f64)]) -> Vec<usize> {
    let mut ranked = scores.to_vec();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
    ranked.truncate(scores.len().div_ceil(2));
    ranked.into_iter().map(|(depth, _)| depth).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// cnn6 (L = 5): 6 candidates need 3 halvings (6, 3, 2, 1); with 400 steps the rungs
    /// train 50, 100 and 200 steps.
    #[test]
    fn rungs_halve_the_budget_until_one_candidate_is_left() {
        assert_eq!(rung_steps(6, 400), [50, 100, 200]);
        assert_eq!(rung_steps(4, 400), [100, 200]);
        assert_eq!(rung_steps(2, 10), [5]);
        assert_eq!(rung_steps(1, 10), Vec::<usize>::new());
        assert_eq!(rung_steps(9, 4), [1, 1, 1, 2], "never fewer than one step");
        // The candidates left after each rung: 6 -> 3 -> 2 -> 1.
        let mut left = 6_usize;
        for _ in rung_steps(6, 400) {
            left = left.div_ceil(2);
        }
        assert_eq!(left, 1);
    }

    #[test]
    fn the_better_half_survives_and_ties_go_to_the_deeper_freeze() {
        let scores = [(0, 0.5), (1, 0.7), (2, 0.7), (3, 0.6), (4, 0.2)];
        assert_eq!(survivors(&scores), [2, 1, 3]);
        assert_eq!(survivors(&[(0, 0.9), (5, 0.9)]), [5]);
        assert_eq!(survivors(&[(3, 0.1)]), [3]);
    }
}
