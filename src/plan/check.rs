//! Checks a sweep point beyond its types: ranges, names, depths, and what the later stages
//! know (the data it names, the model's blocks, the tracking address). The spec itself knows
//! none of these, so the check lives with the planner, which runs it on every sweep point.

use std::collections::BTreeSet;

use crate::data::Catalog;
use crate::error::InputError;
use crate::model;
use crate::spec::*;

use super::check_model::{check_images, check_model};

/// Makes a located error for the value at a key path.
pub type Locate<'a> = &'a dyn Fn(&str, String) -> InputError;

/// Longest `name`: it names a folder, and file systems allow 255 bytes per name.
const MAX_NAME: usize = 200;

/// Checks one fully resolved spec (a sweep point: every axis replaced by one value).
pub fn check(spec: &Spec, catalog: &Catalog, at: Locate) -> Result<(), InputError> {
    if spec.name.is_empty()
        || !spec
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || spec.name.starts_with('.')
    {
        return Err(
            at("name", format!("`{}` cannot name a run folder", spec.name))
                .with_help("use letters, digits, `-`, `_` and `.`, not starting with `.`"),
        );
    }
    if spec.name.len() > MAX_NAME {
        return Err(at(
            "name",
            format!(
                "a name of {} characters is too long for a run folder",
                spec.name.len()
            ),
        )
        .with_help(format!("use at most {MAX_NAME} characters")));
    }
    for (name, dataset) in &spec.datasets {
        check_dataset(&format!("datasets.{name}"), dataset, at)?;
    }
    check_model(&spec.model, at)?;
    if let Some(mlflow) = spec.tracking.as_ref().and_then(|t| t.mlflow.as_ref()) {
        crate::tracking::mlflow::Client::new(&mlflow.uri).map_err(|error| {
            at("tracking.mlflow.uri", error.to_string())
                .with_help("xferlab talks to MLflow tracking servers over HTTP, e.g. http://127.0.0.1:5000 (`just mlflow` starts one)")
        })?;
    }
    let blocks = model::block_count(&spec.model);

    let selections = selections(spec);
    for (path, selection) in &selections {
        check_selection(path, selection, spec, catalog, at)?;
    }
    match (&spec.source.pretrain, &spec.source.checkpoint) {
        (Some(pretrain), None) => check_train("source.pretrain.train", &pretrain.train, at)?,
        (None, Some(_)) => {}
        (Some(_), Some(_)) => {
            return Err(at(
                "source",
                "`source` has both `pretrain` and `checkpoint`".into(),
            )
            .with_help("give exactly one of `pretrain` or `checkpoint`"));
        }
        (None, None) => {
            return Err(at(
                "source",
                "`source` needs `pretrain`, `checkpoint` or `hub`".into(),
            )
            .with_help("e.g. source: {checkpoint: model.safetensors}"));
        }
    }
    check_train("train", &spec.train, at)?;

    let class_count = |s: &DataSelection| -> Result<usize, InputError> {
        Ok(match &s.classes {
            Some(classes) => classes.len(),
            None => catalog.class_counts(&s.dataset, s.split)?.len(),
        })
    };
    let (train_classes, eval_classes) = (
        class_count(&spec.target.train)?,
        class_count(&spec.target.eval)?,
    );
    if train_classes != eval_classes {
        return Err(at(
            "target.eval.classes",
            format!(
                "the target is trained on {train_classes} classes but evaluated on {eval_classes}"
            ),
        )
        .with_help("give target.eval the same classes as target.train, in the same order"));
    }

    check_images(&spec.model, &selections, catalog, at)?;

    if spec.strategies.is_empty() {
        return Err(
            at("strategies", "`strategies` is empty".into()).with_help(format!(
                "name at least one of: {}",
                Strategy::names().join(", ")
            )),
        );
    }
    for (i, entry) in spec.strategies.iter().enumerate() {
        match entry {
            StrategyEntry::Named(strategy) if strategy.uses_freeze_depth() => {
                match spec.freeze_depth {
                    None => {
                        return Err(at(&format!("strategies.{i}"), format!("`{strategy}` needs a `freeze_depth`"))
                        .with_help(format!(
                            "set `freeze_depth: 1`, or sweep it: `sweep: {{freeze_depth: [{}]}}` (the model has {blocks} block{})",
                            (1..=blocks).map(|d| d.to_string()).collect::<Vec<_>>().join(", "),
                            if blocks == 1 { "" } else { "s" }
                        )));
                    }
                    Some(f) if f > blocks => {
                        return Err(at(
                            "freeze_depth",
                            format!("freeze_depth {f} is deeper than the model's {blocks} blocks"),
                        )
                        .with_help(format!("use 0..={blocks}")));
                    }
                    Some(_) => {}
                }
            }
            StrategyEntry::Raw(raw) => {
                let path = format!("strategies.{i}");
                if raw.transfer_depth > blocks {
                    return Err(at(
                        &format!("{path}.transfer_depth"),
                        format!(
                            "transfer_depth {} is deeper than the model's {blocks} blocks",
                            raw.transfer_depth
                        ),
                    )
                    .with_help(format!("use 0..={blocks}")));
                }
                if raw.freeze_depth > raw.transfer_depth {
                    return Err(at(&format!("{path}.freeze_depth"), format!("freeze_depth {} is deeper than transfer_depth {}: only transferred blocks can be frozen", raw.freeze_depth, raw.transfer_depth))
                        .with_help(format!("use 0..={}", raw.transfer_depth)));
                }
            }
            StrategyEntry::Named(_) => {}
        }
    }
    Ok(())
}

/// Every data selection of the spec, with its key path.
pub fn selections(spec: &Spec) -> Vec<(&'static str, &DataSelection)> {
    let mut all = vec![
        ("target.train", &spec.target.train),
        ("target.eval", &spec.target.eval),
    ];
    if let Some(pretrain) = &spec.source.pretrain {
        all.insert(0, ("source.pretrain.data", &pretrain.data));
    }
    all
}

fn check_dataset(path: &str, dataset: &DatasetSpec, at: Locate) -> Result<(), InputError> {
    match dataset.format {
        DatasetFormat::Idx if dataset.dir.is_none() => {
            return Err(at(
                path,
                "an idx dataset needs `dir`, the folder of its files".into(),
            ));
        }
        DatasetFormat::ImageFolder if dataset.dir.is_none() => {
            return Err(at(
                path,
                "an image_folder dataset needs `dir`, the folder of its class folders".into(),
            ));
        }
        DatasetFormat::ImageFolder if dataset.image_size.is_none() => {
            return Err(at(
                path,
                "an image_folder dataset needs `image_size`, the side its images are cropped to"
                    .into(),
            )
            .with_help("e.g. image_size: 64; ImageNet models are trained at 224"));
        }
        DatasetFormat::Idx | DatasetFormat::ImageFolder if dataset.generated.is_some() => {
            return Err(at(
                &format!("{path}.generated"),
                "`generated` options apply only to format `generated`".into(),
            ));
        }
        DatasetFormat::Generated if dataset.dir.is_some() => {
            return Err(at(
                &format!("{path}.dir"),
                "a generated dataset has no `dir`".into(),
            ));
        }
        _ => {}
    }
    if let Some(g) = &dataset.generated {
        let gpath = format!("{path}.generated");
        if !(1..=50).contains(&g.classes) {
            return Err(at(
                &format!("{gpath}.classes"),
                format!("{} classes: use 1 to 50", g.classes),
            ));
        }
        if g.image_size < 8 || g.image_size % 4 != 0 || g.image_size > 256 {
            return Err(at(
                &format!("{gpath}.image_size"),
                format!(
                    "image_size {}: use a multiple of 4 from 8 to 256",
                    g.image_size
                ),
            ));
        }
        if !g.noise.is_finite() || g.noise < 0.0 {
            return Err(at(
                &format!("{gpath}.noise"),
                format!("noise {}: use a finite number >= 0", g.noise),
            ));
        }
        for (key, n) in [
            ("train_per_class", g.train_per_class),
            ("test_per_class", g.test_per_class),
        ] {
            if n == 0 || n > 100_000 {
                return Err(at(
                    &format!("{gpath}.{key}"),
                    format!("{key} {n}: use 1 to 100000"),
                ));
            }
        }
    }
    if let Some(size) = dataset.image_size
        && !(8..=1024).contains(&size)
    {
        return Err(at(
            &format!("{path}.image_size"),
            format!("image_size {size}: use 8 to 1024"),
        ));
    }
    let channels = match (dataset.channels, dataset.format) {
        (Some(c @ (1 | 3)), _) => c,
        (Some(c), _) => {
            return Err(at(
                &format!("{path}.channels"),
                format!("channels {c}: use 1 (grey) or 3 (RGB)"),
            ));
        }
        (None, DatasetFormat::ImageFolder) => 3,
        (None, _) => 1,
    };
    match (dataset.holdout, dataset.format) {
        (Some(h), DatasetFormat::ImageFolder) if !(h > 0.0 && h < 1.0) => {
            return Err(at(
                &format!("{path}.holdout"),
                format!("holdout {h}: use a fraction between 0 and 1, e.g. 0.2"),
            ));
        }
        (Some(_), DatasetFormat::Idx | DatasetFormat::Generated) => {
            return Err(at(
                &format!("{path}.holdout"),
                "`holdout` applies only to format `image_folder`".into(),
            ));
        }
        _ => {}
    }
    if dataset.skip_unreadable && dataset.format != DatasetFormat::ImageFolder {
        return Err(at(
            &format!("{path}.skip_unreadable"),
            "`skip_unreadable` applies only to format `image_folder`".into(),
        ));
    }
    if let Some(preset) = dataset.normalize {
        let name = match preset {
            Normalization::Imagenet => "imagenet",
        };
        if dataset.mean != PerChannel::All(0.0) || dataset.std != PerChannel::All(1.0) {
            return Err(at(
                &format!("{path}.normalize"),
                format!("`normalize: {name}` sets the mean and std, and so do `mean` and `std`"),
            )
            .with_help("give either `normalize` or `mean` and `std`"));
        }
        if channels != 3 {
            return Err(at(
                &format!("{path}.normalize"),
                format!("`normalize: {name}` is for RGB images, but these have {channels} channel"),
            )
            .with_help("add `channels: 3` (grey images are repeated into RGB)"));
        }
    }
    let (mean, std) = dataset.standardisation();
    for (key, given, positive) in [("mean", &mean, false), ("std", &std, true)] {
        let values = given.values();
        let at_key = format!("{path}.{key}");
        if let PerChannel::Each(list) = given
            && list.len() != channels
        {
            return Err(at(
                &at_key,
                format!(
                    "{key} has {} values, but the images have {channels} channel{}",
                    list.len(),
                    if channels == 1 { "" } else { "s" }
                ),
            )
            .with_help("give one number, or one per channel"));
        }
        if let Some(bad) = (values.iter()).find(|v| !v.is_finite() || (positive && **v <= 0.0)) {
            let wanted = if positive {
                "a finite number > 0"
            } else {
                "a finite number"
            };
            return Err(at(&at_key, format!("{key} {bad}: use {wanted}")));
        }
    }
    Ok(())
}

fn check_train(path: &str, train: &TrainSpec, at: Locate) -> Result<(), InputError> {
    match (train.steps, train.epochs) {
        (Some(_), Some(_)) => {
            return Err(at(
                &format!("{path}.epochs"),
                format!("`{path}` has both `steps` and `epochs`"),
            )
            .with_help("give one of them"));
        }
        (None, None) => return Err(at(path, format!("`{path}` needs `steps` or `epochs`"))),
        (Some(0), _) => {
            return Err(at(
                &format!("{path}.steps"),
                "steps must be at least 1".into(),
            ));
        }
        (_, Some(0)) => {
            return Err(at(
                &format!("{path}.epochs"),
                "epochs must be at least 1".into(),
            ));
        }
        _ => {}
    }
    if train.batch_size == 0 {
        return Err(at(
            &format!("{path}.batch_size"),
            "batch_size must be at least 1".into(),
        ));
    }
    if !train.lr.is_finite() || train.lr <= 0.0 {
        return Err(at(
            &format!("{path}.lr"),
            format!("lr {}: use a finite number > 0", train.lr),
        ));
    }
    if train.log_every == 0 {
        return Err(at(
            &format!("{path}.log_every"),
            "log_every must be at least 1".into(),
        ));
    }
    if let Some(decay) = train.weight_decay {
        if train.optimizer == OptimizerKind::Adam {
            return Err(at(
                &format!("{path}.weight_decay"),
                "adam takes no weight_decay".into(),
            )
            .with_help("use optimizer: adamw for decoupled weight decay"));
        }
        if !decay.is_finite() || decay < 0.0 {
            return Err(at(
                &format!("{path}.weight_decay"),
                format!("weight_decay {decay}: use a finite number >= 0"),
            ));
        }
    }
    if let Some(momentum) = train.momentum {
        if train.optimizer != OptimizerKind::Sgd {
            return Err(at(
                &format!("{path}.momentum"),
                "momentum applies only to sgd".into(),
            ));
        }
        if !(0.0..1.0).contains(&momentum) {
            return Err(at(
                &format!("{path}.momentum"),
                format!("momentum {momentum}: use a number in [0, 1)"),
            ));
        }
    }
    Ok(())
}

fn check_selection(
    path: &str,
    selection: &DataSelection,
    spec: &Spec,
    catalog: &Catalog,
    at: Locate,
) -> Result<(), InputError> {
    if !spec.datasets.contains_key(&selection.dataset) {
        let names: Vec<&str> = spec.datasets.keys().map(String::as_str).collect();
        return Err(at(
            &format!("{path}.dataset"),
            format!("no dataset named `{}`", selection.dataset),
        )
        .with_help(suggest::help(&selection.dataset, &names, "datasets")));
    }
    // A data error keeps the file it names; it points at the spec only when it names none.
    let located = |e: InputError| {
        let at_dir = at(
            &format!("datasets.{}.dir", selection.dataset),
            e.message.clone(),
        );
        InputError {
            origin: e.origin.or(at_dir.origin),
            help: e.help,
            ..at_dir
        }
    };
    let counts = catalog
        .class_counts(&selection.dataset, selection.split)
        .map_err(located)?;
    // Image files are decoded here, once (the catalog keeps them for the run), so that an
    // unreadable image is refused before anything trains.
    if spec.datasets[&selection.dataset].format == DatasetFormat::ImageFolder {
        catalog
            .images(&selection.dataset, selection.split)
            .map_err(located)?;
    }
    let classes: Vec<u32> = match &selection.classes {
        Some(classes) => classes.clone(),
        None => counts.keys().copied().collect(),
    };
    if classes.is_empty() {
        return Err(at(&format!("{path}.classes"), "`classes` is empty".into()));
    }
    let mut seen = BTreeSet::new();
    for (i, class) in classes.iter().enumerate() {
        if !seen.insert(class) {
            return Err(at(
                &format!("{path}.classes.{i}"),
                format!("class {class} is listed twice"),
            ));
        }
        if !counts.contains_key(class) {
            let present: Vec<String> = counts.keys().map(u32::to_string).collect();
            return Err(at(
                &format!("{path}.classes.{i}"),
                format!(
                    "class {class} is not in the {} split of `{}`",
                    selection.split.name(),
                    selection.dataset
                ),
            )
            .with_help(format!("its classes are {}", present.join(", "))));
        }
    }
    if let Some(per_class) = selection.per_class {
        if per_class == 0 {
            return Err(at(
                &format!("{path}.per_class"),
                "per_class must be at least 1".into(),
            ));
        }
        if let Some((class, have)) = classes
            .iter()
            .map(|c| (c, counts[c]))
            .find(|(_, n)| *n < per_class)
        {
            return Err(at(
                &format!("{path}.per_class"),
                format!(
                    "per_class {per_class} is more than class {class} has: {have} images in the {} split of `{}`",
                    selection.split.name(),
                    selection.dataset
                ),
            )
            .with_help(format!("use at most {have}, or leave per_class out to take every image")));
        }
    }
    Ok(())
}
