//! PyTorch's zip checkpoint format (1.6 and later): `ROOT/data.pkl` holds the state dict,
//! `ROOT/data/KEY` each storage's raw bytes.
//!
//! candle reads this format too (`candle_core::pickle`), but it accepts any global in
//! `data.pkl` and skips what it cannot read with a message on stderr; this reads the same
//! archive through the guarded unpickler and the state dict code it shares with the legacy
//! format.

use std::io::{Read, Seek};

use candle_core::Tensor;

use super::pickle::{Fault, unpickle};
use super::state_dict;

/// Reads the tensors of a zip-format checkpoint, in the state dict's order.
pub fn read<R: Read + Seek>(reader: R) -> Result<Vec<(String, Tensor)>, Fault> {
    let bad = |e: zip::result::ZipError| Fault::Malformed(format!("it is not a readable zip: {e}"));
    let mut archive = zip::ZipArchive::new(reader).map_err(bad)?;
    let names = archive
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<Result<Vec<String>, _>>()
        .map_err(bad)?;
    let pickles: Vec<&String> = names
        .iter()
        .filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .collect();
    let [pickle] = pickles.as_slice() else {
        return Err(Fault::Malformed(format!(
            "a PyTorch zip holds one data.pkl; this one holds {}",
            pickles.len()
        )));
    };
    let root = &pickle[..pickle.len() - "data.pkl".len()];
    if let Some(order) = entry(&mut archive, &format!("{root}byteorder"), 16)?
        && order != b"little"
    {
        return Err(Fault::Malformed(format!(
            "its byte order is {:?}; xferlab reads little-endian storages only",
            String::from_utf8_lossy(&order)
        )));
    }
    // The pickle is small beside the storages; 1 GiB bounds a file that lies about it.
    let bytes = entry(&mut archive, pickle, 1 << 30)?
        .ok_or_else(|| Fault::Malformed(format!("{pickle} cannot be read")))?;
    let refs = state_dict::tensor_refs(unpickle(&bytes, "data.pkl")?)?;
    refs.iter()
        .map(|r| {
            let name = format!("{root}data/{}", r.storage.key);
            let length = r
                .storage
                .numel
                .checked_mul(r.storage.dtype.size_in_bytes())
                .ok_or_else(|| Fault::Malformed(format!("storage {name} is too large")))?;
            let storage = entry(&mut archive, &name, length)?
                .ok_or_else(|| Fault::Malformed(format!("storage {name} is missing")))?;
            if storage.len() < length {
                return Err(Fault::Truncated(format!("storage {name}")));
            }
            Ok((r.name.clone(), state_dict::tensor(r, &storage)?))
        })
        .collect()
}

/// The bytes of entry `name` (None when absent), refusing one larger than `limit`.
fn entry<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    name: &str,
    limit: usize,
) -> Result<Option<Vec<u8>>, Fault> {
    let mut file = match archive.by_name(name) {
        Ok(file) => file,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(Fault::Malformed(format!("{name} cannot be read: {e}"))),
    };
    if file.size() > limit as u64 {
        return Err(Fault::Malformed(format!(
            "{name} holds {} bytes, more than the {limit} expected",
            file.size()
        )));
    }
    let mut bytes = Vec::with_capacity(file.size() as usize);
    file.read_to_end(&mut bytes)
        .map_err(|_| Fault::Truncated(name.to_string()))?;
    Ok(Some(bytes))
}
