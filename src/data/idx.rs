//! MNIST-style IDX files (`train-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`, ...).

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{ImageShape, Images};
use crate::error::{InputError, Origin, shown};
use crate::spec::Split;

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

fn prefix(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "t10k",
    }
}

/// The file for `stem` in `dir`, raw or gzipped.
fn find(dir: &Path, stem: &str) -> Result<PathBuf, InputError> {
    if !dir.is_dir() {
        return Err(
            InputError::new(format!("dataset folder {} does not exist", shown(dir))).with_help(
                "on Debian, Fashion-MNIST comes with `apt-get install dataset-fashion-mnist`",
            ),
        );
    }
    for name in [format!("{stem}.gz"), stem.to_string()] {
        let path = dir.join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    Err(InputError::new(format!(
        "{} has no {stem} or {stem}.gz",
        shown(dir)
    )))
}

fn file_error(path: &Path, message: impl Into<String>) -> InputError {
    InputError::new(message).with_origin(Origin::File {
        path: path.to_path_buf(),
        position: None,
        line_text: None,
    })
}

/// Reads an IDX file's bytes (gunzipping when it starts with the gzip magic), checks its magic
/// and returns its dimensions and its payload, which must hold exactly their product of bytes.
fn read(path: &Path, magic: u32) -> Result<(Vec<usize>, Vec<u8>), InputError> {
    let raw = std::fs::read(path).map_err(|e| file_error(path, format!("cannot read: {e}")))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| file_error(path, format!("not a valid gzip file: {e}")))?;
        out
    } else {
        raw
    };
    let word = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let found = word(0).ok_or_else(|| file_error(path, "too short for an IDX header"))?;
    if found != magic {
        return Err(file_error(
            path,
            format!(
                "not an IDX file of unsigned bytes with {} dimension(s): magic number is {found:#010x}, expected {magic:#010x}",
                magic & 0xff
            ),
        ));
    }
    let rank = (magic & 0xff) as usize;
    let dims = (0..rank)
        .map(|i| word(4 + 4 * i).map(|d| d as usize))
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| file_error(path, "truncated IDX header"))?;
    let header = 4 + 4 * rank;
    let expected: usize = dims.iter().product();
    let payload = bytes.len() - header.min(bytes.len());
    if payload != expected {
        return Err(file_error(
            path,
            format!("dimensions {dims:?} need {expected} bytes of data, the file has {payload}"),
        ));
    }
    Ok((dims, bytes[header..].to_vec()))
}

pub(super) fn labels(dir: &Path, split: Split) -> Result<Vec<u32>, InputError> {
    let path = find(dir, &format!("{}-labels-idx1-ubyte", prefix(split)))?;
    let (_, bytes) = read(&path, LABELS_MAGIC)?;
    Ok(bytes.into_iter().map(u32::from).collect())
}

/// The dimensions in an images file's header, after checking its magic and that its size
/// fits them, without unpacking it (a gzip file's unpacked size is in its trailer).
fn image_dims(path: &Path) -> Result<[usize; 3], InputError> {
    let cannot = |e: std::io::Error| file_error(path, format!("cannot read: {e}"));
    let mut file = std::fs::File::open(path).map_err(cannot)?;
    let length = file.metadata().map_err(cannot)?.len();
    let mut start = [0u8; 2];
    let gzipped = file.read_exact(&mut start).is_ok() && start == [0x1f, 0x8b];
    let size = if gzipped {
        use std::io::{Seek, SeekFrom};
        let mut trailer = [0u8; 4];
        file.seek(SeekFrom::End(-4))
            .and_then(|_| file.read_exact(&mut trailer))
            .map_err(|_| file_error(path, "not a valid gzip file: too short"))?;
        u64::from(u32::from_le_bytes(trailer))
    } else {
        length
    };
    let mut reader = std::io::BufReader::new(std::fs::File::open(path).map_err(cannot)?);
    let mut header = [0u8; 16];
    let read = if gzipped {
        flate2::bufread::GzDecoder::new(reader).read_exact(&mut header)
    } else {
        reader.read_exact(&mut header)
    };
    read.map_err(|_| file_error(path, "too short for an IDX header"))?;
    let word = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    if word(0) != IMAGES_MAGIC {
        return Err(file_error(
            path,
            format!(
                "not an IDX file of unsigned bytes with 3 dimension(s): magic number is {:#010x}, expected {IMAGES_MAGIC:#010x}",
                word(0)
            ),
        ));
    }
    let dims = [word(4) as usize, word(8) as usize, word(12) as usize];
    let expected = dims.iter().map(|&d| d as u64).product::<u64>();
    // The gzip trailer holds the size modulo 2^32.
    let found = size.saturating_sub(16);
    let fits = if gzipped {
        (expected + 16) % (1 << 32) == size
    } else {
        expected == found
    };
    if !fits {
        let has = if gzipped {
            "the size in the gzip file's trailer does not match: it is truncated or corrupt".into()
        } else {
            format!("the file has {found}")
        };
        return Err(file_error(
            path,
            format!("dimensions {dims:?} need {expected} bytes of data, {has}"),
        ));
    }
    Ok(dims)
}

/// The image shape, from the header alone: no need to unpack the whole file to plan.
pub(super) fn shape(dir: &Path, split: Split) -> Result<ImageShape, InputError> {
    let path = find(dir, &format!("{}-images-idx3-ubyte", prefix(split)))?;
    let [_, height, width] = image_dims(&path)?;
    Ok(ImageShape {
        channels: 1,
        height,
        width,
    })
}

/// The labels of a split, after checking that its images file agrees with them (magic, size,
/// count) without unpacking the images: what planning needs to know.
pub(super) fn checked_labels(dir: &Path, split: Split) -> Result<Vec<u32>, InputError> {
    let path = find(dir, &format!("{}-images-idx3-ubyte", prefix(split)))?;
    let [count, ..] = image_dims(&path)?;
    let labels = labels(dir, split)?;
    agree(&path, dir, count, labels.len())?;
    Ok(labels)
}

fn agree(path: &Path, dir: &Path, images: usize, labels: usize) -> Result<(), InputError> {
    if images == labels {
        return Ok(());
    }
    Err(file_error(
        path,
        format!("{images} images but {labels} labels in {}", shown(dir)),
    ))
}

pub(super) fn images(dir: &Path, split: Split) -> Result<Images, InputError> {
    let path = find(dir, &format!("{}-images-idx3-ubyte", prefix(split)))?;
    let (dims, bytes) = read(&path, IMAGES_MAGIC)?;
    let labels = labels(dir, split)?;
    agree(&path, dir, dims[0], labels.len())?;
    Ok(Images {
        shape: ImageShape {
            channels: 1,
            height: dims[1],
            width: dims[2],
        },
        pixels: bytes.into_iter().map(|b| f32::from(b) / 255.0).collect(),
        labels,
    })
}

/// Writes an IDX file of unsigned bytes: for tests and fixtures.
pub fn write(path: &Path, dims: &[usize], data: &[u8]) -> std::io::Result<()> {
    let mut bytes = vec![0, 0, 8, dims.len() as u8];
    for &d in dims {
        bytes.extend((d as u32).to_be_bytes());
    }
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_raw_and_gzipped_files_and_rejects_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let pixels: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8 * 10).collect();
        write(
            &dir.path().join("train-images-idx3-ubyte"),
            &[2, 3, 4],
            &pixels,
        )
        .unwrap();
        let labels_path = dir.path().join("train-labels-idx1-ubyte.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &[0, 0, 8, 1, 0, 0, 0, 2, 7, 9]).unwrap();
        std::fs::write(&labels_path, gz.finish().unwrap()).unwrap();

        let images = images(dir.path(), Split::Train).unwrap();
        assert_eq!(
            images.shape,
            ImageShape {
                channels: 1,
                height: 3,
                width: 4
            }
        );
        assert_eq!(images.labels, vec![7, 9]);
        assert_eq!(images.pixels[1], 10.0 / 255.0);

        write(
            &dir.path().join("t10k-images-idx3-ubyte"),
            &[2, 3, 4],
            &pixels[..20],
        )
        .unwrap();
        let error = super::images(dir.path(), Split::Test).unwrap_err();
        assert!(
            error
                .message
                .contains("need 24 bytes of data, the file has 20"),
            "{error}"
        );
        std::fs::write(
            dir.path().join("t10k-labels-idx1-ubyte"),
            [0, 0, 8, 3, 0, 0],
        )
        .unwrap();
        let error = labels(dir.path(), Split::Test).unwrap_err();
        assert!(
            error.message.contains("magic number is 0x00000803"),
            "{error}"
        );
    }
}
