//! Image folders in torchvision's ImageFolder layout: `root/<class>/<image>`, classes sorted
//! by name and numbered from 0. Splits are `root/train/` and `root/test/` when both exist;
//! otherwise the classes sit under `root` and a `holdout` fraction of each class is the test
//! split, chosen by a hash of each file's name, not by its position.
//! PNG and JPEG files are decoded with the `image` crate, once per split and process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{ImageShape, Images};
use crate::error::{InputError, Origin, shown};
use crate::spec::Split;

/// File name extensions read as images (any case).
const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The image files of one split, by class.
pub struct Listing {
    /// Class names, sorted; a class's label is its position.
    pub classes: Vec<String>,
    /// Each image's file and label, sorted by class, then name.
    pub files: Vec<(PathBuf, u32)>,
}

/// What a class folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// PNG and JPEG images (`image_folder`); other files are ignored.
    Images,
    /// Text documents (`text_folder`): every file.
    Texts,
}

impl Kind {
    fn holds(self, path: &Path) -> bool {
        match self {
            Kind::Images => is_image(path),
            Kind::Texts => true,
        }
    }

    fn folder(self) -> &'static str {
        match self {
            Kind::Images => "image folder",
            Kind::Texts => "text folder",
        }
    }

    fn files(self) -> &'static str {
        match self {
            Kind::Images => "PNG or JPEG image",
            Kind::Texts => "file",
        }
    }
}

/// Lists one split of the folder `root` without reading any file.
pub fn list(
    root: &Path,
    split: Split,
    holdout: Option<f64>,
    kind: Kind,
) -> Result<Listing, InputError> {
    if !root.is_dir() {
        return Err(InputError::new(format!(
            "{} {} does not exist",
            kind.folder(),
            shown(root)
        )));
    }
    let (train, test) = (root.join("train"), root.join("test"));
    let (dir, holdout) = match (train.is_dir() && test.is_dir(), holdout) {
        (true, _) => (if split == Split::Train { train } else { test }, None),
        (false, Some(fraction)) => (root.to_path_buf(), Some(fraction)),
        (false, None) => {
            return Err(InputError::new(format!(
                "{} {} has no train/ and test/ folders",
                kind.folder(),
                shown(root)
            ))
            .with_help("split it into train/ and test/, or set `holdout: 0.2` to hold out a fifth of each class as the test split"));
        }
    };
    let classes = subfolders(&dir)?;
    if classes.is_empty() {
        return Err(InputError::new(format!(
            "{} has no class folders: {}s go in {}/<class>/<file>",
            shown(&dir),
            kind.files(),
            shown(&dir)
        )));
    }
    let mut files = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let folder = dir.join(class);
        let mut images: Vec<PathBuf> = entries(&folder)?
            .into_iter()
            .filter(|p| p.is_file() && kind.holds(p))
            .collect();
        images.sort();
        if images.is_empty() {
            return Err(InputError::new(format!(
                "class folder {} holds no {}",
                shown(&folder),
                kind.files()
            )));
        }
        if let Some(fraction) = holdout {
            images = held_out(images, fraction, split);
        }
        files.extend(images.into_iter().map(|p| (p, label as u32)));
    }
    Ok(Listing { classes, files })
}

/// One split of a class's images under `holdout`: the `fraction` of them whose names hash
/// lowest (at least one, and at least one left to train on) is the test split. A hash of the
/// name, not its position, so adding an image moves few others.
fn held_out(images: Vec<PathBuf>, fraction: f64, split: Split) -> Vec<PathBuf> {
    let hash = |path: &PathBuf| {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        Sha256::digest(name.unwrap_or_default().as_bytes())
    };
    let mut ranked: Vec<(_, PathBuf)> = images.into_iter().map(|p| (hash(&p), p)).collect();
    ranked.sort();
    let held =
        ((ranked.len() as f64 * fraction).round() as usize).clamp(1, ranked.len().max(2) - 1);
    let mut chosen: Vec<PathBuf> = match split {
        Split::Test => ranked.into_iter().take(held).map(|(_, p)| p).collect(),
        Split::Train => ranked.into_iter().skip(held).map(|(_, p)| p).collect(),
    };
    chosen.sort();
    chosen
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn entries(dir: &Path) -> Result<Vec<PathBuf>, InputError> {
    let read = std::fs::read_dir(dir)
        .map_err(|e| InputError::new(format!("cannot read folder {}: {e}", shown(dir))))?;
    let mut paths = Vec::new();
    for entry in read {
        let entry = entry
            .map_err(|e| InputError::new(format!("cannot read folder {}: {e}", shown(dir))))?;
        // Hidden entries (.DS_Store, .git) are not classes or images.
        if !entry.file_name().to_string_lossy().starts_with('.') {
            paths.push(entry.path());
        }
    }
    Ok(paths)
}

fn subfolders(dir: &Path) -> Result<Vec<String>, InputError> {
    let mut names: Vec<String> = entries(dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    names.sort();
    Ok(names)
}

/// Images per class of a listing.
pub fn class_counts(listing: &Listing) -> BTreeMap<u32, usize> {
    let labels: Vec<u32> = listing.files.iter().map(|(_, l)| *l).collect();
    super::count(&labels)
}

/// The decoded images of a listing, and the files skipped as unreadable.
pub struct Read {
    /// The images.
    pub images: Images,
    /// Files that could not be decoded (only when skipping was asked).
    pub skipped: Vec<PathBuf>,
}

/// Decodes every image of a listing, each resized so its shorter side is `shape`'s, centre
/// cropped to it, and converted to its channels (1: luminance, 3: RGB). A file that cannot
/// be decoded is an error naming it, or, with `skip_unreadable`, left out and listed.
pub fn images(
    listing: &Listing,
    shape: ImageShape,
    skip_unreadable: bool,
) -> Result<Read, InputError> {
    let mut pixels = Vec::with_capacity(listing.files.len() * shape.values());
    let (mut labels, mut skipped) = (Vec::new(), Vec::new());
    for (path, label) in &listing.files {
        match image::open(path) {
            Ok(image) => {
                pixels.extend(fit(&image, shape.height, shape.channels));
                labels.push(*label);
            }
            Err(_) if skip_unreadable => skipped.push(path.clone()),
            Err(e) => {
                return Err(InputError::new(format!("cannot decode image: {e}"))
                    .with_help("fix or remove it, or set `skip_unreadable: true` on the dataset to leave such files out")
                    .with_origin(Origin::File {
                        path: path.clone(),
                        position: None,
                        line_text: None,
                    }));
            }
        }
    }
    Ok(Read {
        images: Images {
            shape,
            pixels,
            labels,
        },
        skipped,
    })
}

/// An image as `channels` x `size` x `size` values in [0, 1]: the shorter side resized to
/// `size` (bilinear), then the centre cropped, with torchvision's arithmetic (Resize truncates
/// the longer side, CenterCrop rounds the offset).
pub fn fit(image: &image::DynamicImage, size: usize, channels: usize) -> Vec<f32> {
    let (width, height) = (image.width() as u64, image.height() as u64);
    let side = size as u64;
    let (w, h) = if width <= height {
        (side, side * height / width)
    } else {
        (side * width / height, side)
    };
    let resized = image.resize_exact(w as u32, h as u32, image::imageops::FilterType::Triangle);
    let offset = |long: u64| ((long - side) as f64 / 2.0).round() as u32;
    let cropped = resized.crop_imm(offset(w), offset(h), size as u32, size as u32);
    let planes = match channels {
        1 => vec![cropped.to_luma8().into_raw()],
        _ => {
            let rgb = cropped.to_rgb8().into_raw();
            (0..3)
                .map(|c| rgb.iter().skip(c).step_by(3).copied().collect())
                .collect()
        }
    };
    planes
        .into_iter()
        .flatten()
        .map(|v| f32::from(v) / 255.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_resizes_the_shorter_side_crops_the_centre_and_keeps_channels_apart() {
        // 6x2: red left third, green middle, blue right third; its centre square is green.
        let image = image::RgbImage::from_fn(6, 2, |x, _| match x / 2 {
            0 => image::Rgb([255, 0, 0]),
            1 => image::Rgb([0, 255, 0]),
            _ => image::Rgb([0, 0, 255]),
        });
        let values = fit(&image::DynamicImage::from(image), 2, 3);
        assert_eq!(
            values,
            [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
        );
        let grey = fit(
            &image::DynamicImage::from(image::GrayImage::new(4, 4)),
            2,
            3,
        );
        assert_eq!(grey.len(), 3 * 2 * 2);
    }

    #[test]
    fn holdout_splits_every_class_into_disjoint_parts() {
        let dir = tempfile::tempdir().unwrap();
        for (class, n) in [("a", 2), ("b", 10)] {
            std::fs::create_dir_all(dir.path().join(class)).unwrap();
            for i in 0..n {
                image::GrayImage::new(2, 2)
                    .save(dir.path().join(class).join(format!("{i}.png")))
                    .unwrap();
            }
        }
        let train = list(dir.path(), Split::Train, Some(0.3), Kind::Images).unwrap();
        let test = list(dir.path(), Split::Test, Some(0.3), Kind::Images).unwrap();
        assert_eq!(train.classes, ["a", "b"]);
        let count = |l: &Listing, label| l.files.iter().filter(|(_, c)| *c == label).count();
        // At least one image on each side, even for a class of two.
        assert_eq!((count(&train, 0), count(&test, 0)), (1, 1));
        assert_eq!((count(&train, 1), count(&test, 1)), (7, 3));
        assert!(train.files.iter().all(|f| !test.files.contains(f)));
    }
}
