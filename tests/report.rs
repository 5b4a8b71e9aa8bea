//! Reports of a fixed run store (tests/data/store/small: 24 trials of the small sweep over
//! 3 seeds, one failed, one not run), snapshotted with their numbers in every format.

mod common;

use common::Test;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/store/small");

#[test]
fn tables_and_statistics_of_a_fixed_store() {
    let test = Test::new();
    for (format, name) in [
        ("table", "fixture_table"),
        ("md", "fixture_md"),
        ("csv", "fixture_csv"),
        ("json", "fixture_json"),
    ] {
        let ran = test.run(&["report", FIXTURE, "--format", format]);
        assert_eq!(ran.code, 0, "{}", ran.stderr);
        insta::assert_snapshot!(name, ran.stdout);
    }
}
