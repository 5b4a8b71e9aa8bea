//! Checks that a model spec is complete and that an architecture can take the images it is
//! given: each architecture's own rules, in one place.

use crate::data::{Catalog, ImageShape};
use crate::error::InputError;
use crate::model::import::arch_name;
use crate::spec::{Arch, DataSelection, ModelSpec};

use super::check::Locate;

/// EfficientNet and ResNet halve their input five times (an output stride of 32): smaller
/// images reach the last stages as a single pixel made mostly of padding, and ImageNet
/// features mean little there. 32 is the smallest side at which every stage still sees real
/// pixels.
pub const IMAGENET_MIN_SIDE: usize = 32;

/// Checks the `model` section on its own.
pub fn check_model(model: &ModelSpec, at: Locate) -> Result<(), InputError> {
    match (model.arch, &model.hidden) {
        (Arch::Mlp, None) => Err(at(
            "model",
            "an mlp needs `hidden`, its layer widths (one block each)".into(),
        )
        .with_help("e.g. model: {arch: mlp, hidden: [128, 128, 64]}")),
        (Arch::Mlp, Some(hidden))
            if hidden.is_empty() || hidden.contains(&0) || hidden.iter().any(|&h| h > 65_536) =>
        {
            Err(at(
                "model.hidden",
                format!("hidden {hidden:?}: give at least one width, each from 1 to 65536"),
            ))
        }
        (arch, Some(_)) if arch != Arch::Mlp => Err(at(
            "model.hidden",
            format!(
                "`hidden` applies only to `mlp`; {}'s layers are fixed",
                arch_name(arch)
            ),
        )),
        (Arch::Bert, _) => check_encoder(model, at),
        (arch, _) => {
            let text_keys = [
                ("pooling", model.pooling.is_some()),
                ("max_length", model.max_length.is_some()),
                ("config", model.config.is_some()),
                ("tokenizer", model.tokenizer.is_some()),
            ];
            match text_keys.iter().find(|(_, given)| *given) {
                Some((key, _)) => Err(at(
                    &format!("model.{key}"),
                    format!("`{key}` applies only to `bert`, not {}", arch_name(arch)),
                )),
                None => Ok(()),
            }
        }
    }
}

/// Checks a text encoder's shape and input length.
fn check_encoder(model: &ModelSpec, at: Locate) -> Result<(), InputError> {
    let Some(config) = &model.config else {
        return Err(at("model", "bert needs its `config`".into()));
    };
    let sizes = [
        ("vocab_size", config.vocab_size),
        ("hidden_size", config.hidden_size),
        ("num_hidden_layers", config.num_hidden_layers),
        ("num_attention_heads", config.num_attention_heads),
        ("intermediate_size", config.intermediate_size),
        ("max_position_embeddings", config.max_position_embeddings),
        ("type_vocab_size", config.type_vocab_size),
    ];
    if let Some((key, _)) = sizes.iter().find(|(_, n)| *n == 0) {
        return Err(at(&format!("model.config.{key}"), format!("{key} is 0")));
    }
    if let Err(why) = crate::model::bert::check(config) {
        return Err(at("model.config", format!("bert's config: {why}")));
    }
    let longest = config.max_position_embeddings;
    if !(2..=longest).contains(&model.max_length()) {
        return Err(at(
            "model.max_length",
            format!(
                "max_length {}: the encoder takes 2 to {longest} tokens",
                model.max_length()
            ),
        ));
    }
    Ok(())
}

/// Checks that every data selection (with its key path) has images of one shape, and that
/// the model takes them.
pub fn check_images(
    model: &ModelSpec,
    selections: &[(&str, &DataSelection)],
    catalog: &Catalog,
    at: Locate,
) -> Result<(), InputError> {
    let mut shapes: Vec<(&str, ImageShape)> = Vec::new();
    for (path, selection) in selections {
        shapes.push((path, catalog.shape(&selection.dataset)?));
    }
    if let Some((path, shape)) = shapes.iter().find(|(_, s)| *s != shapes[0].1) {
        return Err(at(
            &format!("{path}.dataset"),
            format!(
                "images of {}x{}x{} here, but {}x{}x{} in `{}`: one model cannot take both",
                shape.channels,
                shape.height,
                shape.width,
                shapes[0].1.channels,
                shapes[0].1.height,
                shapes[0].1.width,
                shapes[0].0
            ),
        ));
    }
    check_input(model, shapes[0].1, at)
}

/// Checks that the model takes images of `shape`.
fn check_input(model: &ModelSpec, shape: ImageShape, at: Locate) -> Result<(), InputError> {
    let (height, width) = (shape.height, shape.width);
    match model.arch {
        Arch::Mlp => Ok(()),
        Arch::Cnn6 if !height.is_multiple_of(4) || !width.is_multiple_of(4) => Err(at(
            "model.arch",
            format!(
                "cnn6 pools twice, so image sides must be multiples of 4, not {height}x{width}"
            ),
        )),
        Arch::Cnn6 => Ok(()),
        // The ImageNet architectures.
        arch if shape.channels != 3 => Err(at(
            "model.arch",
            format!(
                "{} takes RGB images (3 channels), but the data has {}",
                arch_name(arch),
                shape.channels
            ),
        )
        .with_help("give the datasets `channels: 3` (grey images are repeated into RGB)")),
        arch if height < IMAGENET_MIN_SIDE || width < IMAGENET_MIN_SIDE => Err(at(
            "model.arch",
            format!(
                "{} halves images five times, so they need sides of at least \
                 {IMAGENET_MIN_SIDE}, not {height}x{width}",
                arch_name(arch)
            ),
        )
        .with_help(
            "give the datasets e.g. `image_size: 64` (ImageNet's weights are trained at 224)",
        )),
        _ => Ok(()),
    }
}
