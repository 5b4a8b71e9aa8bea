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
    check_domain(spec, at)?;
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

    if spec.domain == Domain::Vision {
        check_images(&spec.model, &selections, catalog, at)?;
    }

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
                if raw.adapter.is_some() && raw.freeze_depth >= blocks {
                    return Err(at(
                        &format!("{path}.adapter"),
                        format!("an adapter trains blocks above freeze_depth, and freeze_depth {} leaves none of the model's {blocks} blocks", raw.freeze_depth),
                    )
                    .with_help(format!("use freeze_depth 0..{blocks}, or no adapter")));
                }
            }
            StrategyEntry::Named(_) => {}
        }
    }
    let auto =
        (spec.strategies.iter()).position(|e| *e == StrategyEntry::Named(Strategy::AutoDepth));
    if let (Some(i), Some(per_class)) = (auto, spec.target.train.per_class)
        && per_class < 3
    {
        return Err(at(
            "target.train.per_class",
            format!("auto_depth (strategies.{i}) holds out a fifth of each class's training examples to choose the depth, and per_class {per_class} leaves none"),
        )
        .with_help("give auto_depth at least 3 examples per class"));
    }
    let gradual = (spec.strategies.iter())
        .position(|e| *e == StrategyEntry::Named(Strategy::GradualUnfreeze));
    match (gradual, spec.train.unfreeze_every) {
        (Some(i), None) => Err(at(
            &format!("strategies.{i}"),
            "gradual_unfreeze needs train.unfreeze_every".into(),
        )
        .with_help(
            "the steps between unfreezing one more block, e.g. train: {unfreeze_every: 50}",
        )),
        (_, Some(0)) => Err(at(
            "train.unfreeze_every",
            "unfreeze_every must be at least 1".into(),
        )),
        _ => Ok(()),
    }
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

/// The model and every dataset the spec reads belong to its domain.
fn check_domain(spec: &Spec, at: Locate) -> Result<(), InputError> {
    let text = spec.domain == Domain::Text;
    if text != (spec.model.arch == Arch::Bert) {
        let help = match text {
            true => "the text domain's encoder is `arch: bert`",
            false => "bert reads texts: set `domain: text`",
        };
        return Err(at(
            "model.arch",
            format!(
                "{} is not a model of the {} domain",
                crate::model::import::arch_name(spec.model.arch),
                spec.domain.name()
            ),
        )
        .with_help(help));
    }
    for (path, selection) in selections(spec) {
        if let Some(dataset) = spec.datasets.get(&selection.dataset)
            && dataset.format.is_text() != text
        {
            let holds = if text { "images" } else { "texts" };
            return Err(at(
                &format!("{path}.dataset"),
                format!(
                    "dataset `{}` holds {holds}, but the spec's domain is {}",
                    selection.dataset,
                    spec.domain.name()
                ),
            )
            .with_help(match text {
                true => "text datasets are `format: text_folder` or `format: text_table`",
                false => "texts need `domain: text` and `model: {arch: bert}`",
            }));
        }
    }
    Ok(())
}

/// Checks a text dataset's own keys, and that it has none of the image keys.
fn check_text_dataset(path: &str, dataset: &DatasetSpec, at: Locate) -> Result<(), InputError> {
    let image_keys = [
        ("image_size", dataset.image_size.is_some()),
        ("channels", dataset.channels.is_some()),
        ("normalize", dataset.normalize.is_some()),
        ("mean", dataset.mean != PerChannel::All(0.0)),
        ("std", dataset.std != PerChannel::All(1.0)),
        ("skip_unreadable", dataset.skip_unreadable),
        ("generated", dataset.generated.is_some()),
    ];
    if let Some((key, _)) = image_keys.iter().find(|(_, given)| *given) {
        return Err(at(
            &format!("{path}.{key}"),
            format!("`{key}` applies only to image datasets"),
        ));
    }
    match dataset.format {
        DatasetFormat::TextFolder if dataset.dir.is_none() => Err(at(
            path,
            "a text_folder dataset needs `dir`, the folder of its class folders".into(),
        )),
        DatasetFormat::TextTable if dataset.file.is_none() => Err(at(
            path,
            "a text_table dataset needs `file`, a CSV or JSONL file of texts and labels".into(),
        )
        .with_help("e.g. file: reviews.csv, text_field: review, label_field: stars")),
        DatasetFormat::TextTable if dataset.dir.is_some() => Err(at(
            &format!("{path}.dir"),
            "a text_table dataset reads `file` (and `test_file`), not `dir`".into(),
        )),
        DatasetFormat::TextTable if dataset.test_file.is_some() && dataset.holdout.is_some() => {
            Err(at(
                &format!("{path}.holdout"),
                "`holdout` and `test_file` both give a test split".into(),
            )
            .with_help("give one of them"))
        }
        _ => {
            let labels = dataset.labels.as_deref().unwrap_or(&[]);
            if dataset.labels.is_some() && labels.is_empty() {
                return Err(at(&format!("{path}.labels"), "`labels` is empty".into()));
            }
            for (i, label) in labels.iter().enumerate() {
                if labels[..i].contains(label) {
                    return Err(at(
                        &format!("{path}.labels.{i}"),
                        format!("label `{label}` is listed twice"),
                    ));
                }
            }
            Ok(())
        }
    }
}

fn check_dataset(path: &str, dataset: &DatasetSpec, at: Locate) -> Result<(), InputError> {
    let table_keys = [
        ("file", dataset.file.is_some()),
        ("test_file", dataset.test_file.is_some()),
        ("text_field", dataset.text_field.is_some()),
        ("label_field", dataset.label_field.is_some()),
        ("labels", dataset.labels.is_some()),
    ];
    if dataset.format != DatasetFormat::TextTable
        && let Some((key, _)) = table_keys.iter().find(|(_, given)| *given)
    {
        return Err(at(
            &format!("{path}.{key}"),
            format!("`{key}` applies only to format `text_table`"),
        ));
    }
    if let Some(h) = dataset.holdout
        && !(h > 0.0 && h < 1.0)
    {
        return Err(at(
            &format!("{path}.holdout"),
            format!("holdout {h}: use a fraction between 0 and 1, e.g. 0.2"),
        ));
    }
    if dataset.format.is_text() {
        return check_text_dataset(path, dataset, at);
    }
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
    if dataset.holdout.is_some() && dataset.format != DatasetFormat::ImageFolder {
        return Err(at(
            &format!("{path}.holdout"),
            "`holdout` applies only to formats `image_folder`, `text_folder` and `text_table`"
                .into(),
        ));
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
    if let Some(decay) = train.layer_lr_decay
        && !(decay > 0.0 && decay <= 1.0)
    {
        return Err(at(
            &format!("{path}.layer_lr_decay"),
            format!("layer_lr_decay {decay}: use a number in (0, 1]"),
        )
        .with_help("each block down trains this much slower than the one above: e.g. 0.8, or 1/2.6 = 0.385 (ULMFiT)"));
    }
    if let Some(head) = train.head_lr
        && !(head.is_finite() && head > 0.0)
    {
        return Err(at(
            &format!("{path}.head_lr"),
            format!("head_lr {head}: use a finite number > 0"),
        ));
    }
    if let Some(stop) = &train.early_stopping {
        let key = |k: &str| format!("{path}.early_stopping.{k}");
        if !(stop.holdout > 0.0 && stop.holdout < 1.0) {
            return Err(at(
                &key("holdout"),
                format!("holdout {}: use a fraction in (0, 1)", stop.holdout),
            )
            .with_help("e.g. 0.1: a tenth of each class's training examples validates"));
        }
        if stop.every == 0 {
            return Err(at(&key("every"), "every must be at least 1".into()));
        }
        if stop.patience == 0 {
            return Err(at(&key("patience"), "patience must be at least 1".into())
                .with_help("the validations without improvement to wait before stopping, e.g. 3"));
        }
    }
    if let Some(lora) = &train.lora {
        let key = |k: &str| format!("{path}.lora.{k}");
        if lora.rank == 0 {
            return Err(at(&key("rank"), "rank must be at least 1".into())
                .with_help("the rank of each layer's update B A, e.g. 4, 8 or 16"));
        }
        if !(lora.alpha.is_finite() && lora.alpha > 0.0) {
            return Err(at(
                &key("alpha"),
                format!("alpha {}: use a finite number > 0", lora.alpha),
            )
            .with_help("the update is scaled by alpha / rank; e.g. alpha equal to rank"));
        }
        if !(0.0..1.0).contains(&lora.dropout) {
            return Err(at(
                &key("dropout"),
                format!("dropout {}: use a number in [0, 1)", lora.dropout),
            ));
        }
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
    // Image files are decoded and texts tokenised here, once (the catalog keeps them for the
    // run), so that an unreadable file is refused before anything trains.
    let format = spec.datasets[&selection.dataset].format;
    if format == DatasetFormat::ImageFolder {
        catalog
            .images(&selection.dataset, selection.split)
            .map_err(located)?;
    }
    if format.is_text() {
        catalog
            .tokens(&selection.dataset, selection.split, &spec.model)
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
