//! Every spec under tests/data/bad is refused with exit code 2 and a located message,
//! snapshotted; nothing is written to the run store. Alias bombs and deep nesting included:
//! they must be refused in bounded time and memory.

mod common;

use std::process::Command;

#[test]
fn bad_specs_are_refused_with_located_messages() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bad");
    insta::glob!("data/bad/*.yaml", |path| {
        let name = path.file_name().unwrap().to_str().unwrap();
        // Optional first lines: `# args: ...` adds arguments (e.g. --set) to the command,
        // `# env: NAME=VALUE` sets a variable (the value is the rest of the line).
        let text = std::fs::read_to_string(path).unwrap();
        // `run`, so that a check made too late would show as files in the store.
        let mut args = vec!["run", name, "--device", "cpu"];
        let mut variables = Vec::new();
        for line in text.lines().take_while(|l| l.starts_with("# ")) {
            if let Some(extra) = line.strip_prefix("# args: ") {
                args.extend(extra.split_whitespace());
            } else if let Some(variable) = line.strip_prefix("# env: ") {
                variables.push(variable.split_once('=').unwrap());
            }
        }
        let store = tempfile::tempdir().unwrap();
        let output = Command::new(common::binary())
            .args(&args)
            .envs(variables)
            .current_dir(&dir)
            .env("XFERLAB_STORE", store.path())
            .env_remove("MLFLOW_TRACKING_URI")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{name}: {stderr}");
        assert!(output.stdout.is_empty(), "{name} printed to stdout");
        assert_eq!(
            std::fs::read_dir(store.path()).unwrap().count(),
            0,
            "{name} wrote to the store"
        );
        insta::assert_snapshot!(stderr);
    });
}
