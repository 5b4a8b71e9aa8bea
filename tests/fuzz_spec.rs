//! A bounded property test of the spec loader, the `--set` parser and the planner: thousands
//! of mutated specs and overrides (seeded, so a failure replays), each of which must load,
//! plan or be refused with a message — never panic, never hang. `just fuzz` runs it longer,
//! and runs the coverage-guided cargo-fuzz target in fuzz/ when cargo-fuzz is installed.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use xferlab::data::Catalog;

const BASE: &str = include_str!("../experiments/quickstart.yaml");

/// Values that have broken parsers and validators before.
const INTERESTING: &[&str] = &[
    "-1",
    "0",
    "1",
    "1e309",
    "-1e309",
    ".nan",
    ".inf",
    "18446744073709551616",
    "4294967296",
    "99999999999999999999",
    "1.5",
    "[]",
    "{}",
    "[[]]",
    "~",
    "null",
    "true",
    "''",
    "\"",
    "'",
    "[",
    "]",
    "{",
    "}",
    ":",
    ": ",
    "- ",
    "-",
    "\t",
    "\n",
    "\n  ",
    "#",
    "&a x",
    "*a",
    "&a [1]",
    "!!binary aGk=",
    "!!str",
    "<<: *a",
    "? ",
    "|\n  x",
    ">",
    "%YAML 1.2\n---\n",
    "---\n",
    "...",
    "\u{0}",
    "\u{feff}",
    "é",
    "glyphs",
    "mlp",
    "cnn6",
    "scratch",
    "transfer",
    "sgd",
    "test",
    "freeze_depth",
    "transfer_depth",
    "per_class",
    "sweep",
    "seed",
    "tracking",
    "uri",
    "http://127.0.0.1:1",
    "file:x",
    "a.b",
    "..",
    "name",
    "steps",
    "epochs",
];

const KEYS: &[&str] = &[
    "train.lr",
    "train.steps",
    "train.epochs",
    "train.batch_size",
    "train.optimizer",
    "target.train.per_class",
    "target.train.classes",
    "seed",
    "freeze_depth",
    "sweep.seed",
    "sweep.train.lr",
    "sweep.freeze_depth",
    "sweep.nope",
    "model.hidden",
    "model.arch",
    "source.pretrain.seed",
    "datasets.glyphs.generated.classes",
    "datasets.glyphs.std",
    "tracking.mlflow.uri",
    "strategies",
    "name",
    "",
    ".",
    "a..b",
    "sweep.",
    "train.lr.x",
];

fn mutate(rng: &mut StdRng, text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for _ in 0..rng.random_range(1..=2) {
        let at = rng.random_range(0..=chars.len());
        match rng.random_range(0..4) {
            0 if !chars.is_empty() => {
                let end = (at + rng.random_range(1..20)).min(chars.len());
                chars.drain(at.min(end)..end);
            }
            1 if !chars.is_empty() => {
                let from = rng.random_range(0..chars.len());
                let end = (from + rng.random_range(1..40)).min(chars.len());
                let span: Vec<char> = chars[from..end].to_vec();
                chars.splice(at..at, span);
            }
            _ => {
                let word = INTERESTING[rng.random_range(0..INTERESTING.len())];
                chars.splice(at..at, word.chars());
            }
        }
    }
    chars.into_iter().collect()
}

fn an_override(rng: &mut StdRng) -> String {
    let key = KEYS[rng.random_range(0..KEYS.len())];
    let value = INTERESTING[rng.random_range(0..INTERESTING.len())];
    match rng.random_range(0..6) {
        0 => format!("{key}{value}"),
        1 => format!("{key}=[{value}, {value}]"),
        _ => format!("{key}={value}"),
    }
}

#[test]
fn mutated_specs_and_overrides_load_or_are_refused_without_panic() {
    let cases: usize = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3000);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(7);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spec.yaml");
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut loaded, mut planned) = (0, 0);
    let mut slowest = (Duration::ZERO, 0);
    for case in 0..cases {
        let text = mutate(&mut rng, BASE);
        let overrides: Vec<String> = (0..rng.random_range(0..3usize).saturating_sub(1))
            .map(|_| an_override(&mut rng))
            .collect();
        std::fs::write(&path, &text).unwrap();
        let started = Instant::now();
        // A panic here fails the test; the case is printed first so it can be replayed.
        let outcome = std::panic::catch_unwind(|| {
            let Ok(spec) = xferlab::spec::load(&path, &overrides) else {
                return (false, false);
            };
            let catalog = Catalog::new(&spec.spec.datasets);
            (true, xferlab::plan::plan(&spec, &catalog).is_ok())
        });
        let (was_loaded, was_planned) = outcome.unwrap_or_else(|_| {
            panic!(
                "case {case} (FUZZ_SEED={seed}) panicked; overrides {overrides:?}; spec:\n{text}"
            )
        });
        loaded += usize::from(was_loaded);
        planned += usize::from(was_planned);
        slowest = slowest.max((started.elapsed(), case));
    }
    eprintln!(
        "{cases} cases (FUZZ_SEED={seed}): {loaded} loaded, {planned} planned; slowest case {} took {:?}",
        slowest.1, slowest.0
    );
    // The mutations must reach past the parser, or the test proves little.
    assert!(loaded > cases / 10, "only {loaded} of {cases} cases loaded");
    assert!(
        planned > cases / 20,
        "only {planned} of {cases} cases planned"
    );
}
