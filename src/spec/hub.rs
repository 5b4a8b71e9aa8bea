//! `source: {hub: ORG/NAME}`: a model in the local Hugging Face cache, found as the Hugging
//! Face libraries lay it out (`models--ORG--NAME/snapshots/REVISION/model.safetensors`, the
//! revision named by `refs/main`), so weights downloaded once by any tool are reused. xferlab
//! itself downloads nothing: a name that is not in the cache is an error listing where it
//! looked.

use std::path::{Path, PathBuf};

/// Files a snapshot may hold the weights in, in the order they are tried.
pub const WEIGHTS: [&str; 3] = ["model.safetensors", "pytorch_model.bin", "model.pth"];

/// The hub caches to look in, first match wins: `HF_HUB_CACHE`, `HF_HOME/hub`,
/// `~/.cache/huggingface/hub`.
pub fn caches() -> Vec<PathBuf> {
    let mut caches = Vec::new();
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        caches.push(PathBuf::from(dir));
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        caches.push(Path::new(&home).join("hub"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        caches.push(Path::new(&home).join(".cache/huggingface/hub"));
    }
    caches
}

/// The weights file of `name` (`ORG/NAME`) in one of `caches`, or every path looked at.
pub fn resolve(name: &str, caches: &[PathBuf]) -> Result<PathBuf, Vec<PathBuf>> {
    let folder = format!("models--{}", name.replace('/', "--"));
    let mut looked = Vec::new();
    for cache in caches {
        let model = cache.join(&folder);
        let snapshots = model.join("snapshots");
        // refs/main names the revision the libraries last fetched; without it, any snapshot.
        let revisions: Vec<PathBuf> = match std::fs::read_to_string(model.join("refs/main")) {
            Ok(revision) => vec![snapshots.join(revision.trim())],
            Err(_) => std::fs::read_dir(&snapshots)
                .map(|entries| {
                    let mut all: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
                    all.sort();
                    all
                })
                .unwrap_or_default(),
        };
        if revisions.is_empty() {
            looked.push(snapshots);
        }
        for revision in revisions {
            for file in WEIGHTS {
                let path = revision.join(file);
                if path.is_file() {
                    return Ok(path);
                }
                looked.push(path);
            }
        }
    }
    Err(looked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_revision_refs_main_names_and_lists_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("models--timm--resnet18.a1_in1k");
        for revision in ["aaa", "bbb"] {
            std::fs::create_dir_all(model.join("snapshots").join(revision)).unwrap();
            std::fs::write(
                model
                    .join("snapshots")
                    .join(revision)
                    .join("model.safetensors"),
                "",
            )
            .unwrap();
        }
        std::fs::create_dir_all(model.join("refs")).unwrap();
        std::fs::write(model.join("refs/main"), "bbb\n").unwrap();
        let caches = [dir.path().join("empty"), dir.path().to_path_buf()];
        assert_eq!(
            resolve("timm/resnet18.a1_in1k", &caches).unwrap(),
            model.join("snapshots/bbb/model.safetensors")
        );
        let looked = resolve("timm/absent", &caches).unwrap_err();
        assert_eq!(looked.len(), 2, "{looked:?}");
        assert!(looked[1].ends_with("models--timm--absent/snapshots"));
    }
}
