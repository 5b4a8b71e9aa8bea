//! A PyTorch state dict as unpickled: names to tensor references, and the references made
//! into tensors once their storages' bytes are known.
//!
//! Both PyTorch formats pickle the same thing: an ordered dict whose values are calls to
//! `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`, each storage a
//! persistent id `('storage', torch.XStorage, key, location, numel[, view])`. They differ
//! only in where the storages' bytes live, so this file is shared and the formats supply the
//! bytes.

use candle_core::pickle::Object;
use candle_core::{DType, Device, Tensor};

use super::pickle::{Fault, Unpickled};

/// A tensor of the state dict before its storage is read.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorRef {
    /// The state dict's key, e.g. `_conv_stem.weight`.
    pub name: String,
    /// The storage it views.
    pub storage: StorageRef,
    /// First element, counted in the storage's elements.
    pub offset: usize,
    /// Shape.
    pub size: Vec<usize>,
    /// Strides, in elements.
    pub stride: Vec<usize>,
}

/// A storage as a persistent id names it.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageRef {
    /// The key its bytes are filed under.
    pub key: String,
    /// What it holds.
    pub dtype: DType,
    /// Elements in the whole storage.
    pub numel: usize,
    /// Old PyTorch's storage views: (first element, elements) of the root storage.
    pub view: Option<(usize, usize)>,
}

/// The storage type a persistent id names, as candle's type.
fn storage_dtype(class: &str) -> Option<DType> {
    Some(match class {
        "FloatStorage" => DType::F32,
        "HalfStorage" => DType::F16,
        "BFloat16Storage" => DType::BF16,
        "DoubleStorage" => DType::F64,
        "LongStorage" => DType::I64,
        "IntStorage" => DType::I32,
        // Booleans are one byte, 0 or 1, as in PyTorch.
        "ByteStorage" | "BoolStorage" => DType::U8,
        _ => return None,
    })
}

fn malformed(name: &str, what: impl std::fmt::Display) -> Fault {
    Fault::Malformed(format!("entry `{name}` {what}"))
}

fn count(object: &Object, name: &str, what: &str) -> Result<usize, Fault> {
    match object {
        Object::Int(v) if *v >= 0 => Ok(*v as usize),
        Object::Long(v) if *v >= 0 => Ok(*v as usize),
        other => Err(malformed(
            name,
            format!("has {what} {other:?}, not a count"),
        )),
    }
}

fn counts(object: &Object, name: &str, what: &str) -> Result<Vec<usize>, Fault> {
    match object {
        Object::Tuple(items) => items.iter().map(|o| count(o, name, what)).collect(),
        other => Err(malformed(
            name,
            format!("has {what} {other:?}, not a tuple"),
        )),
    }
}

fn is_class(object: &Object, module: &str, class: &str) -> bool {
    matches!(object, Object::Class { module_name, class_name }
        if module_name == module && class_name == class)
}

/// The tensors of an unpickled state dict, in the file's order.
pub fn tensor_refs(pickle: Unpickled) -> Result<Vec<TensorRef>, Fault> {
    let Object::Dict(entries) = pickle.object else {
        return Err(Fault::Malformed(
            "the pickle holds no dict of tensors (a whole pickled model, not a state dict?)".into(),
        ));
    };
    let mut refs = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let Object::Unicode(name) = key else {
            return Err(Fault::Malformed(format!(
                "the state dict has a key {key:?} that is not a name"
            )));
        };
        // An OrderedDict's attributes arrive through BUILD beside its entries: PyTorch keeps
        // each module's version under `_metadata`.
        if name == "_metadata" && matches!(value, Object::Dict(_)) {
            continue;
        }
        refs.push(tensor_ref(&name, value)?);
    }
    refs.sort_by_key(|r| pickle.first_seen.get(&r.name).copied());
    Ok(refs)
}

fn tensor_ref(name: &str, value: Object) -> Result<TensorRef, Fault> {
    let Object::Reduce { callable, args } = value else {
        return Err(malformed(name, format!("is {value:?}, not a tensor")));
    };
    let (callable, args) = if is_class(&callable, "torch._utils", "_rebuild_parameter") {
        // _rebuild_parameter(tensor, requires_grad, backward_hooks)
        match *args {
            Object::Tuple(mut items) if !items.is_empty() => match items.swap_remove(0) {
                Object::Reduce { callable, args } => (callable, args),
                other => return Err(malformed(name, format!("is a parameter of {other:?}"))),
            },
            other => return Err(malformed(name, format!("is a parameter of {other:?}"))),
        }
    } else {
        (callable, args)
    };
    if !is_class(&callable, "torch._utils", "_rebuild_tensor_v2") {
        return Err(malformed(
            name,
            format!("is built by {callable:?}, not a tensor"),
        ));
    }
    // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[, meta])
    let Object::Tuple(items) = *args else {
        return Err(malformed(name, "has no tensor arguments"));
    };
    if items.len() < 4 {
        return Err(malformed(name, "has too few tensor arguments"));
    }
    let Object::PersistentLoad(id) = &items[0] else {
        return Err(malformed(name, "has no storage"));
    };
    let storage = storage_ref(name, id)?;
    let offset = count(&items[1], name, "offset")?;
    let size = counts(&items[2], name, "size")?;
    let stride = counts(&items[3], name, "stride")?;
    if size.len() != stride.len() {
        return Err(malformed(
            name,
            format!("has {} sizes but {} strides", size.len(), stride.len()),
        ));
    }
    Ok(TensorRef {
        name: name.to_string(),
        storage,
        offset,
        size,
        stride,
    })
}

fn storage_ref(name: &str, id: &Object) -> Result<StorageRef, Fault> {
    let Object::Tuple(id) = id else {
        return Err(malformed(name, format!("has storage {id:?}")));
    };
    let [tag, class, key, _location, numel, rest @ ..] = id.as_slice() else {
        return Err(malformed(name, format!("has storage {id:?}")));
    };
    if *tag != Object::Unicode("storage".into()) {
        return Err(malformed(name, format!("has storage tag {tag:?}")));
    }
    let dtype = match class {
        Object::Class { class_name, .. } => storage_dtype(class_name)
            .ok_or_else(|| malformed(name, format!("has unsupported storage {class_name}")))?,
        other => return Err(malformed(name, format!("has storage type {other:?}"))),
    };
    let Object::Unicode(key) = key else {
        return Err(malformed(name, format!("has storage key {key:?}")));
    };
    let numel = count(numel, name, "storage size")?;
    let view = match rest {
        [] | [Object::None] => None,
        [Object::Tuple(view)] if view.len() == 3 => Some((
            count(&view[1], name, "view offset")?,
            count(&view[2], name, "view size")?,
        )),
        other => return Err(malformed(name, format!("has storage view {other:?}"))),
    };
    Ok(StorageRef {
        key: key.clone(),
        dtype,
        numel,
        view,
    })
}

/// Makes the tensor `r` from the bytes of its whole storage (`storage`, already checked to
/// hold `r.storage.numel` elements), following its view, offset and strides.
pub fn tensor(r: &TensorRef, storage: &[u8]) -> Result<Tensor, Fault> {
    let element = r.storage.dtype.size_in_bytes();
    let (base, available) = match r.storage.view {
        None => (0, r.storage.numel),
        Some((start, length)) => {
            if start
                .checked_add(length)
                .is_none_or(|end| end > r.storage.numel)
            {
                return Err(malformed(&r.name, "views past the end of its storage"));
            }
            (start, length)
        }
    };
    // More elements than the storage holds would need strides of 0 (an expanded tensor),
    // which a state dict does not save; refusing them bounds what a damaged file allocates.
    let elements = r
        .size
        .iter()
        .try_fold(1usize, |n, &size| n.checked_mul(size))
        .filter(|&n| n <= available)
        .ok_or_else(|| malformed(&r.name, "has more elements than its storage"))?;
    let out_of_range = || malformed(&r.name, "reaches past the end of its storage");
    let mut bytes = Vec::with_capacity(elements * element);
    if elements > 0 {
        // The last element the view touches must lie inside the storage.
        let mut last = r.offset;
        for (&size, &stride) in r.size.iter().zip(&r.stride) {
            last = (size - 1)
                .checked_mul(stride)
                .and_then(|s| s.checked_add(last))
                .ok_or_else(out_of_range)?;
        }
        if last >= available {
            return Err(out_of_range());
        }
        // Nearly every tensor of a state dict is contiguous: one slice.
        let mut contiguous = true;
        let mut expected = 1;
        for (&size, &stride) in r.size.iter().zip(&r.stride).rev() {
            contiguous &= size == 1 || stride == expected;
            expected *= size;
        }
        if contiguous {
            let start = (base + r.offset) * element;
            bytes.extend_from_slice(&storage[start..start + elements * element]);
        } else {
            let mut index = vec![0usize; r.size.len()];
            for _ in 0..elements {
                let at: usize = base
                    + r.offset
                    + index
                        .iter()
                        .zip(&r.stride)
                        .map(|(i, s)| i * s)
                        .sum::<usize>();
                bytes.extend_from_slice(&storage[at * element..(at + 1) * element]);
                // The next index, last dimension fastest (row-major, as PyTorch lays out).
                for d in (0..index.len()).rev() {
                    index[d] += 1;
                    if index[d] < r.size[d] {
                        break;
                    }
                    index[d] = 0;
                }
            }
        }
    }
    Tensor::from_raw_buffer(&bytes, r.storage.dtype, &r.size, &Device::Cpu)
        .map_err(|e| malformed(&r.name, format!("cannot be made a tensor: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(offset: usize, size: Vec<usize>, stride: Vec<usize>) -> TensorRef {
        TensorRef {
            name: "t".into(),
            storage: StorageRef {
                key: "0".into(),
                dtype: DType::F32,
                numel: 12,
                view: None,
            },
            offset,
            size,
            stride,
        }
    }

    fn storage() -> Vec<u8> {
        (0..12).flat_map(|i| (i as f32).to_le_bytes()).collect()
    }

    #[test]
    fn strides_and_offsets_select_the_viewed_elements() {
        // A 3x2 transpose of the 2x3 block starting at element 2 of a 4x3 row-major storage.
        let t = tensor(&reference(2, vec![3, 2], vec![1, 3]), &storage()).unwrap();
        assert_eq!(
            t.to_vec2::<f32>().unwrap(),
            [[2.0, 5.0], [3.0, 6.0], [4.0, 7.0]]
        );
        let scalar = tensor(&reference(11, vec![], vec![]), &storage()).unwrap();
        assert_eq!(scalar.to_scalar::<f32>().unwrap(), 11.0);
        let view = TensorRef {
            storage: StorageRef {
                view: Some((6, 6)),
                ..reference(0, vec![], vec![]).storage
            },
            ..reference(1, vec![2], vec![2])
        };
        assert_eq!(
            tensor(&view, &storage()).unwrap().to_vec1::<f32>().unwrap(),
            [7.0, 9.0]
        );
    }

    #[test]
    fn a_view_past_its_storage_is_an_error() {
        assert!(tensor(&reference(2, vec![4, 3], vec![3, 1]), &storage()).is_err());
        assert!(tensor(&reference(0, vec![2], vec![usize::MAX]), &storage()).is_err());
        let huge = reference(0, vec![1 << 40, 1 << 40], vec![0, 0]);
        assert!(tensor(&huge, &storage()).is_err());
        assert!(tensor(&reference(0, vec![13], vec![0]), &storage()).is_err());
    }
}
