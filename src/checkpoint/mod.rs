//! Reading a state dict (names to tensors) from a checkpoint file someone else wrote:
//! safetensors, PyTorch's zip format (`.pth`/`.pt` since 1.6) or its legacy format.
//!
//! The format is told by the file's first bytes, not its name. PyTorch files are pickles,
//! which can name any Python function; they are unpickled by a machine that runs nothing and
//! accepts only the globals a state dict needs, so a file that names anything else is bad
//! input naming that global. Which tensors a model takes from the state dict is the model's
//! business (`crate::model`), not this module's.

mod legacy;
mod pickle;
mod state_dict;
mod zipped;

use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{Origin, shown};
use crate::{InputError, Result};

pub use pickle::Fault;

/// The checkpoint formats xferlab reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Hugging Face safetensors.
    Safetensors,
    /// PyTorch's zip format (`torch.save` since 1.6).
    PytorchZip,
    /// PyTorch's legacy format (`torch.save` before 1.6, or `_use_new_zipfile_serialization=False`).
    PytorchLegacy,
}

/// A checkpoint's tensors, in the file's order (safetensors: by name), on the CPU.
#[derive(Debug)]
pub struct StateDict {
    /// The format it was read from.
    pub format: Format,
    /// Names and tensors.
    pub tensors: Vec<(String, Tensor)>,
}

impl StateDict {
    /// The tensor named `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// Tells the format from the first bytes of a file.
pub fn detect(head: &[u8]) -> Option<Format> {
    if head.starts_with(b"PK\x03\x04") {
        Some(Format::PytorchZip)
    } else if head.starts_with(&legacy::MAGIC[..4]) {
        Some(Format::PytorchLegacy)
    } else if head.len() >= 9 && head[8] == b'{' {
        // safetensors: an 8-byte header length, then the JSON header.
        Some(Format::Safetensors)
    } else {
        None
    }
}

/// Reads the state dict of the checkpoint at `path`; a file that is missing, of another
/// kind, damaged, or naming a global a state dict never needs is bad input.
pub fn read(path: &Path) -> Result<StateDict> {
    let bytes =
        std::fs::read(path).map_err(|e| bad_checkpoint(path, format!("cannot be read ({e})")))?;
    parse(&bytes, path)
}

fn bad_checkpoint(path: &Path, message: String) -> InputError {
    InputError::new(format!("checkpoint {}: {message}", shown(path))).with_origin(Origin::File {
        path: path.to_path_buf(),
        position: None,
        line_text: None,
    })
}

/// Reads the state dict from the bytes of a checkpoint file; `path` names it in errors.
pub fn parse(bytes: &[u8], path: &Path) -> Result<StateDict> {
    let bad = |message: String| bad_checkpoint(path, message);
    let format = detect(bytes).ok_or_else(|| {
        bad("is not a checkpoint xferlab reads".into())
            .with_help("xferlab reads safetensors and PyTorch .pth/.pt files (zip or legacy)")
    })?;
    let tensors = match format {
        Format::Safetensors => {
            let mut tensors: Vec<(String, Tensor)> =
                candle_core::safetensors::load_buffer(bytes, &Device::Cpu)
                    .map_err(|e| bad(format!("is not a readable safetensors file ({e})")))?
                    .into_iter()
                    .collect();
            tensors.sort_by(|a, b| a.0.cmp(&b.0));
            Ok(tensors)
        }
        Format::PytorchZip => zipped::read(std::io::Cursor::new(bytes)),
        Format::PytorchLegacy => legacy::read(bytes),
    }
    .map_err(|fault: Fault| bad(fault.to_string()))?;
    Ok(StateDict { format, tensors })
}
