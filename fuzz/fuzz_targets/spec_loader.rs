//! Coverage-guided fuzzing of the spec loader, the `--set` parser and the planner.
//! The input is a spec's text; lines after a line `--set` are overrides.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xferlab::data::Catalog;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (spec, overrides) = text.split_once("\n--set\n").unwrap_or((&text, ""));
    let overrides: Vec<String> = overrides.lines().map(str::to_string).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spec.yaml");
    std::fs::write(&path, spec).unwrap();
    if let Ok(loaded) = xferlab::spec::load(&path, &overrides) {
        let catalog = Catalog::new(&loaded.spec.datasets);
        let _ = xferlab::plan::plan(&loaded, &catalog);
    }
});
