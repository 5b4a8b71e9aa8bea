//! A small harness that runs the real `xferlab` binary in a private folder.
#![allow(dead_code)]

pub mod mlflow;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A file of assets/ (real weights and photos, put there by `scripts/assets`, which
/// `scripts/test` runs); missing is a failure, never a skip.
pub fn asset(path: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("assets")
        .join(path);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/assets",
        path.display()
    );
    path
}

/// One of the real photos.
pub fn photo(name: &str) -> image::DynamicImage {
    image::open(asset(&format!("photos/{name}"))).unwrap()
}

/// `root/<split>/<class>/<n>.<ext>`: `per_split` crops of each photo per split, at different
/// places and sizes, every other one mirrored, alternately PNG and JPEG.
pub fn write_folder(root: &Path, per_split: u32) {
    for (class, name) in [
        ("cat", "chelsea.png"),
        ("coffee", "coffee.png"),
        ("rocket", "rocket.jpg"),
    ] {
        let photo = photo(name);
        let (w, h) = (photo.width(), photo.height());
        for (s, split) in ["train", "test"].into_iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..per_split {
                let k = i + s as u32 * per_split;
                let side = w.min(h) * (6 + k % 4) / 10;
                let (x, y) = ((w - side) * (k % 5) / 4, (h - side) * (k % 3) / 2);
                let mut crop = photo.crop_imm(x, y, side, side);
                if k % 2 == 1 {
                    crop = crop.fliph();
                }
                let ext = if k.is_multiple_of(2) { "png" } else { "jpg" };
                crop.to_rgb8().save(dir.join(format!("{i}.{ext}"))).unwrap();
            }
        }
    }
}

/// A sweep on the folder `write_folder` makes under `photos`, from glyphs resized to RGB.
pub const PHOTO_SWEEP: &str = "name: photos
datasets:
  photos: {format: image_folder, dir: photos, image_size: 32, mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
  glyphs: {format: generated, image_size: 32, channels: 3, generated: {train_per_class: 60, test_per_class: 10}}
model: {arch: cnn6}
source:
  pretrain:
    data: {dataset: glyphs, classes: [0, 1, 2, 3, 4, 5]}
    train: {steps: 30, batch_size: 32, lr: 1.0e-3}
target:
  train: {dataset: photos, classes: [0, 1, 2], per_class: 6}
  eval: {dataset: photos, split: test, classes: [0, 1, 2]}
train: {steps: 20, batch_size: 9, lr: 1.0e-3}
strategies: [scratch, transfer, finetune]
";

/// The xferlab binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_xferlab")
}

/// A private folder with files in it, where the binary runs.
pub struct Test {
    dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

/// What a run printed and returned.
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Ran {
    fn from(output: Output) -> Self {
        Ran {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Test {
    pub fn new() -> Self {
        Test {
            dir: tempfile::tempdir().expect("a temp dir"),
            env: Vec::new(),
        }
    }

    /// Writes a file (folders created) relative to the test folder.
    pub fn file(self, name: &str, contents: impl AsRef<[u8]>) -> Self {
        let path = self.dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
        self
    }

    /// Sets an environment variable for every run.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A command for the binary with `args`, in the test folder.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(binary());
        command
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .env_remove("XFERLAB_STORE");
        // A developer's own tracking server must not receive test sweeps.
        for key in std::env::vars()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with("MLFLOW_"))
        {
            command.env_remove(key);
        }
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("XFERLAB_")) {
            command.env_remove(key);
        }
        command.envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// Runs the binary with `args` and waits for it.
    pub fn run(&self, args: &[&str]) -> Ran {
        self.command(args).output().expect("the binary runs").into()
    }
}

impl Test {
    /// The records in sweep `name`'s run store folder, by trial id; panics on one that is
    /// not whole JSON.
    pub fn records(&self, name: &str) -> std::collections::BTreeMap<String, serde_json::Value> {
        self.records_in("runs", name)
    }

    /// `records` of a sweep in another store folder.
    pub fn records_in(
        &self,
        store: &str,
        name: &str,
    ) -> std::collections::BTreeMap<String, serde_json::Value> {
        let dir = self.join(&format!("{store}/{name}/trials"));
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Default::default();
        };
        entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .map(|p| {
                let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap())
                    .unwrap_or_else(|e| panic!("{} is not whole: {e}", p.display()));
                (record["id"].as_str().unwrap().to_string(), record)
            })
            .collect()
    }
}

/// A small, fast sweep on the built-in generated data: 2 strategies x 2 sizes x 2 seeds
/// plus depth variants; a few seconds on 2 cores.
pub const SMALL_SWEEP: &str = r#"name: small
datasets:
  glyphs: {format: generated, generated: {train_per_class: 100, test_per_class: 40}}
model: {arch: mlp, hidden: [32, 16]}
source:
  pretrain:
    data: {dataset: glyphs, classes: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}
    train: {epochs: 2, batch_size: 64, lr: 1.0e-3}
target:
  train: {dataset: glyphs, classes: [15, 16, 17], per_class: 5}
  eval: {dataset: glyphs, split: test, classes: [15, 16, 17]}
train: {steps: 60, batch_size: 16, lr: 1.0e-3, log_every: 20}
strategies: [scratch, transfer, partial_freeze, finetune]
sweep:
  freeze_depth: [1]
  target.train.per_class: [5, 20]
  seed: [0, 1]
"#;

/// A small text sweep with the real all-MiniLM-L6-v2 on real e-mails (both from assets/):
/// 4 trials of a few steps on texts cut to 24 tokens; partial_freeze freezes b1..b3 (the
/// embeddings and two layers).
pub fn text_sweep() -> String {
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets");
    asset("all-minilm-l6-v2/model.safetensors");
    format!(
        r#"name: texts
domain: text
datasets:
  spam: {{format: text_folder, dir: {assets}/spam-assassin}}
model: {{arch: bert, max_length: 24}}
source: {{checkpoint: {assets}/all-minilm-l6-v2}}
target:
  train: {{dataset: spam, split: train, per_class: 4}}
  eval: {{dataset: spam, split: test, per_class: 10}}
train: {{steps: 6, batch_size: 4, optimizer: adamw, lr: 1.0e-4, log_every: 2,
        schedule: {{warmup_steps: 2, decay: linear}}}}
strategies: [scratch, transfer, partial_freeze, finetune]
freeze_depth: 3
"#,
        assets = assets.display()
    )
}
