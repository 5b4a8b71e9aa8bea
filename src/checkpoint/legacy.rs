//! PyTorch's legacy checkpoint format (before 1.6), which candle does not read.
//!
//! The file is five pickles and then the storages: a magic number, the format's version
//! (1001), the writer's system (byte order, C type sizes), the state dict whose storages are
//! persistent ids, and the sorted list of storage keys; then for each key in that order an
//! 8-byte little-endian element count and the raw bytes. Many older downloads use it,
//! among them the EfficientNet-Lite weights xferlab's tests classify photos with.

use std::collections::HashMap;

use candle_core::Tensor;
use candle_core::pickle::Object;

use super::pickle::{Fault, Unpickled, unpickle};
use super::state_dict::{self, TensorRef};

/// The first pickle of every legacy file: protocol 2, the integer 0x1950a86a20f9469cfc6c.
pub const MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19\x2e";

/// The only version of the format PyTorch ever wrote.
const VERSION: i32 = 1001;

/// Reads the tensors of a legacy file, in the state dict's order.
pub fn read(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, Fault> {
    let mut at = bytes
        .strip_prefix(MAGIC)
        .map(|_| MAGIC.len())
        .ok_or_else(|| {
            Fault::Malformed("it does not start with PyTorch's legacy magic number".into())
        })?;
    let mut next = |what: &str| -> Result<Unpickled, Fault> {
        let unpickled = unpickle(&bytes[at..], what)?;
        at += unpickled.length;
        Ok(unpickled)
    };
    match next("the version pickle")?.object {
        Object::Int(VERSION) => {}
        other => {
            return Err(Fault::Malformed(format!(
                "its format version is {other:?}, not {VERSION}"
            )));
        }
    }
    let system = next("the system pickle")?.object;
    if !little_endian(&system) {
        return Err(Fault::Malformed(
            "it was written on a big-endian machine; xferlab reads little-endian storages only"
                .into(),
        ));
    }
    let refs = state_dict::tensor_refs(next("the state dict pickle")?)?;
    let keys = match next("the storage key pickle")?.object {
        Object::List(keys) => keys
            .into_iter()
            .map(|k| match k {
                Object::Unicode(k) => Ok(k),
                other => Err(Fault::Malformed(format!("storage key {other:?}"))),
            })
            .collect::<Result<Vec<_>, _>>()?,
        other => return Err(Fault::Malformed(format!("storage keys {other:?}"))),
    };

    // What each key holds, from the tensors that use it.
    let mut kinds = HashMap::new();
    for r in &refs {
        let kind = (r.storage.dtype, r.storage.numel);
        if *kinds.entry(r.storage.key.as_str()).or_insert(kind) != kind {
            return Err(Fault::Malformed(format!(
                "storage {} is named with two types or sizes",
                r.storage.key
            )));
        }
    }
    let mut storages: HashMap<&str, &[u8]> = HashMap::new();
    for key in &keys {
        let &(dtype, numel) = kinds.get(key.as_str()).ok_or_else(|| {
            Fault::Malformed(format!("storage {key} is stored but no tensor uses it"))
        })?;
        let truncated = || Fault::Truncated(format!("storage {key}"));
        let header: [u8; 8] = bytes
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(truncated)?;
        let stored = u64::from_le_bytes(header);
        if stored != numel as u64 {
            return Err(Fault::Malformed(format!(
                "storage {key} holds {stored} elements, its tensors say {numel}"
            )));
        }
        at += 8;
        let length = numel
            .checked_mul(dtype.size_in_bytes())
            .ok_or_else(truncated)?;
        let end = at.checked_add(length).ok_or_else(truncated)?;
        storages.insert(key, bytes.get(at..end).ok_or_else(truncated)?);
        at = end;
    }
    if at != bytes.len() {
        return Err(Fault::Malformed(format!(
            "{} bytes follow the last storage",
            bytes.len() - at
        )));
    }
    refs.iter()
        .map(|r: &TensorRef| {
            let storage = storages
                .get(r.storage.key.as_str())
                .ok_or_else(|| Fault::Malformed(format!("storage {} is missing", r.storage.key)))?;
            Ok((r.name.clone(), state_dict::tensor(r, storage)?))
        })
        .collect()
}

/// Whether the system pickle says little-endian (PyTorch always writes the key).
fn little_endian(system: &Object) -> bool {
    let Object::Dict(entries) = system else {
        return false;
    };
    entries
        .iter()
        .any(|(k, v)| *k == Object::Unicode("little_endian".into()) && *v == Object::Bool(true))
}
