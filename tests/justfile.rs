//! `just --list` is the front door: every recipe shows one summary line that reads as a
//! sentence, under one of the groups the README names. Runs the real `just` (scripts/test
//! installs it when missing); without it the test fails rather than skips.

use std::collections::BTreeSet;
use std::process::Command;

const GROUPS: [&str; 6] = [
    "running sweeps",
    "results",
    "tracking",
    "testing",
    "speed/GPU",
    "maintenance",
];

fn just(args: &[&str]) -> String {
    let justfile = concat!(env!("CARGO_MANIFEST_DIR"), "/justfile");
    let output = Command::new("just")
        .args(["--justfile", justfile, "--color", "never"])
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `just` ({e}): scripts/test installs it (cargo install just --locked)"
            )
        });
    assert!(
        output.status.success(),
        "just {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Why `summary` reads as a fragment rather than a sentence, if it does.
fn fragment(summary: &str) -> Option<&'static str> {
    let Some(first) = summary.chars().next() else {
        return Some("it is empty");
    };
    if !first.is_uppercase() {
        return Some("it does not start with a capital letter");
    }
    for (open, close) in [('(', ')'), ('[', ']'), ('{', '}')] {
        let mut depth = 0i32;
        for c in summary.chars() {
            depth += i32::from(c == open) - i32::from(c == close);
            if depth < 0 {
                return Some("a bracket closes that never opened");
            }
        }
        if depth != 0 {
            return Some("a bracket opens that never closes");
        }
    }
    if !summary.matches('`').count().is_multiple_of(2) {
        return Some("a backquote is never closed");
    }
    if summary.ends_with([',', ':', ';', '(', '-']) {
        return Some("it stops mid-sentence");
    }
    let last = summary.rsplit(' ').next().unwrap_or_default();
    if ["and", "or", "the", "a", "with", "of", "to", "by", "in"].contains(&last) {
        return Some("it stops mid-sentence");
    }
    None
}

#[test]
fn every_recipe_has_a_one_line_summary_in_a_group() {
    let listing = just(&["--list"]);
    let recipes: BTreeSet<String> = just(&["--summary"])
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert!(recipes.contains("ci"), "no `ci` recipe: {recipes:?}");

    let mut group: Option<&str> = None;
    let mut groups = BTreeSet::new();
    let mut listed = BTreeSet::new();
    for line in listing.lines().skip(1).map(str::trim) {
        if line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            group = Some(name);
            groups.insert(name);
            continue;
        }
        let name = line.split_whitespace().next().unwrap();
        let Some((_, summary)) = line.split_once(" # ") else {
            panic!("`{name}` has no summary in `just --list`:\n{listing}");
        };
        assert!(group.is_some(), "`{name}` is in no group:\n{listing}");
        if let Some(why) = fragment(summary.trim()) {
            panic!("the summary of `{name}` reads as a fragment ({why}): {summary}");
        }
        listed.insert(name.to_string());
    }
    assert_eq!(
        listed, recipes,
        "`just --list` and `just --summary` differ:\n{listing}"
    );
    assert_eq!(groups, BTreeSet::from(GROUPS), "{listing}");
}

#[test]
fn fragments_are_told_from_sentences() {
    for sentence in [
        "Run a sweep, resuming what is done: just sweep experiments/quickstart.yaml",
        "Build with CUDA into target/cuda (CUDNN=1 adds cuDNN)",
    ] {
        assert_eq!(fragment(sentence), None, "{sentence}");
    }
    // The tails `just --list` showed of multi-line comments, before each recipe had one line.
    for broken in [
        "",
        "by side: just bench-gpu --jobs 8",
        "wheels) into target/cuda and pack .gpu/ for a GPU machine; CUDNN=1 adds a cuDNN build.",
        "Every step, with the feature cache, and with the cache and --jobs 2 (about 12",
        "Times and results side by side, and",
    ] {
        assert!(fragment(broken).is_some(), "{broken}");
    }
}
