#!/usr/bin/env python3
"""The yardstick for `just bench-gpu` and scripts/bench-sweep: xferlab's sweep written the
usual way in PyTorch.

Eager mode; one trial after another; frozen blocks get requires_grad=False, are put in eval()
(BatchNorm on its running statistics, no dropout, as xferlab runs them) and still run forward
every step; the dataset sits on the device and batches are gathered there (a fair, fast
baseline, not a DataLoader). It runs exactly the trials of `xferlab plan SPEC --json` (read
from the file given), with their steps, batch sizes, optimizers, schedules, learning rates and
seeds. The plan's architecture picks the model, cut into xferlab's blocks so that
transfer_depth t and freeze_depth f mean the same:

- cnn6: DESIGN's five blocks, on IDX images; the source is pretrained once (`source.pretrain`).
- efficientnet_lite0: timm's `tf_efficientnet_lite0` (TensorFlow's "SAME" padding, ReLU6, no
  squeeze-excitation, BatchNorm eps 1e-3: xferlab's arithmetic), blocks stem, the 7 MBConv
  stages, the final 1x1 conv; head: global average pooling and a linear layer. The source is
  the EfficientNet-PyTorch `.pth` checkpoint, renamed to timm's names and loaded strictly.
- bert: Hugging Face `BertModel` (no pooler), blocks the embeddings and each encoder layer,
  the last one pooling (mean over the mask, or [CLS]); head: a linear layer. Texts from a
  `text_folder`, tokenised with the model's tokenizer.json, cut to `model.max_length`.

Blocks from t on start random, initialised as xferlab initialises them (PyTorch's default
conv and linear init, BatchNorm 1/0; BERT's normal(0, 0.02)), not timm's own init.
Images are fitted as xferlab fits them (the `image` crate's bilinear "Triangle" resize,
replicated in numpy, rounded to 8 bits; grey to RGB), then standardised.
Which examples a seed draws, the batch order and the random init differ from xferlab's
(other generators), so accuracies agree as averages over seeds, not trial by trial.

Subnormal floats are flushed to zero on the CPU (torch.set_flush_denormal): EfficientNet
trained from scratch otherwise spends most of its time on them (4.8 s a step against 0.24 on
2 x86 cores), a pathology of the hardware that xferlab does not show; --keep-denormals
measures it anyway.

Timing: sweep_seconds covers loading (or pretraining) the source models and every trial;
reading, resizing and tokenising the datasets happens before, outside it (data_seconds), as
does importing torch; xferlab's wall time includes its own data loading.

Usage: pytorch_twin.py PLAN.json DATA OUT.json [--device cuda] [--check-photos DIR]
                       [--spec-dir DIR] [--keep-denormals]
DATA: the IDX folder for every idx dataset (bench-gpu's Fashion-MNIST), or `-` for the folders
the plan names (relative ones resolved against --spec-dir, as xferlab resolves them against
the spec's folder; `xferlab plan --json` already writes them absolute).
Writes OUT.json: data_seconds, pretrain_seconds, sweep_seconds, and one result per trial
(with its seconds).
"""

import argparse
import gzip
import json
import math
import struct
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def read_idx(path):
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        data = f.read()
    _, kind, dims = struct.unpack(">HBB", data[:4])
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_split(directory, split):
    prefix = "train" if split == "train" else "t10k"
    find = lambda kind: next(Path(directory).glob(f"{prefix}-{kind}-idx*-ubyte*"))
    return read_idx(find("images")), read_idx(find("labels"))


def triangle_weights(source, target):
    """(target, source) weights of the `image` crate's Triangle filter (what xferlab's
    `folder::fit` resizes with): centres at (i + 0.5) * ratio, support widened when shrinking,
    each row normalised."""
    ratio = source / target
    scale = max(ratio, 1.0)
    weights = np.zeros((target, source))
    for out in range(target):
        centre = (out + 0.5) * ratio
        left = min(max(math.floor(centre - scale), 0), source - 1)
        right = min(max(math.ceil(centre + scale), left + 1), source)
        for i in range(left, right):
            weights[out, i] = max(0.0, 1.0 - abs((i - (centre - 0.5)) / scale))
        weights[out] /= weights[out].sum()
    return weights


def fit(images, size):
    """(N, H, W) uint8 images to (N, size, size) as xferlab's `folder::fit`: the shorter side
    resized to `size`, the longer truncated, the centre cropped; rounded half away from zero to
    8 bits. Exact but for float rounding at .5 ties (the crate sums in f32)."""
    _, height, width = images.shape
    if width <= height:
        w, h = size, size * height // width
    else:
        w, h = size * width // height, size
    rows, columns = triangle_weights(height, h), triangle_weights(width, w)
    resized = rows @ images.astype(np.float64) @ columns.T
    resized = np.floor(np.clip(resized, 0, 255) + 0.5).astype(np.uint8)
    top, left = math.floor((h - size) / 2 + 0.5), math.floor((w - size) / 2 + 0.5)
    return resized[:, top : top + size, left : left + size]


def select_indices(labels, classes, per_class, seed):
    """Each class's examples (all, or `per_class` drawn with `seed`) and their new labels,
    0..len(classes) in the order given (every label, sorted, when `classes` is None)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels) if classes is None else classes
    chosen, targets = [], []
    for new_label, c in enumerate(classes):
        indices = np.flatnonzero(labels == c)
        if per_class is not None:
            indices = rng.permutation(indices)[:per_class]
        chosen.append(indices)
        targets.append(np.full(len(indices), new_label))
    return np.concatenate(chosen), np.concatenate(targets)


class Data:
    """One split of an IDX dataset, fitted to the spec's size and channels, standardised, on
    the device."""

    def __init__(self, directory, split, dataset, device):
        images, labels = load_split(directory, split)
        size, channels = dataset.get("image_size"), dataset.get("channels")
        if size is not None and (size, size) != images.shape[1:]:
            images = fit(images, size)
        mean, std = dataset["mean"], dataset["std"]
        if isinstance(mean, list) or isinstance(std, list) or (channels or 1) != 1:
            channels = channels or 1
            per_channel = lambda v: np.resize(np.asarray(v, dtype=np.float32), channels)
            mean = per_channel(mean)[None, :, None, None]
            std = per_channel(std)[None, :, None, None]
            x = images.astype(np.float32)[:, None] / 255.0  # grey to RGB: the plane repeated
            self.images = torch.tensor((np.repeat(x, channels, axis=1) - mean) / std, device=device)
        else:
            self.images = torch.tensor((images.astype(np.float32) / 255.0 - mean) / std, device=device)
            self.images = self.images.unsqueeze(1)
        self.labels = labels.astype(np.int64)
        self.device = device

    def select(self, classes, per_class, seed):
        """The chosen images and labels relabelled 0..len(classes) in the order given."""
        chosen, targets = select_indices(self.labels, classes, per_class, seed)
        chosen = torch.tensor(chosen, device=self.device)
        targets = torch.tensor(targets, device=self.device)
        return self.images[chosen], targets


class Tokens:
    """Padded token ids and each text's length; indexing a batch gives (ids, mask) cut to its
    longest text, as xferlab trims each batch."""

    def __init__(self, ids, lengths):
        self.ids, self.lengths = ids, lengths  # (N, S) on the device; (N,) numpy

    def __len__(self):
        return len(self.lengths)

    def __getitem__(self, index):
        if isinstance(index, torch.Tensor):
            lengths = self.lengths[index.cpu().numpy()]
        else:
            lengths = self.lengths[index]
        longest = int(lengths.max())
        ids = self.ids[index][:, :longest]
        real = torch.tensor(lengths, device=ids.device)
        mask = (torch.arange(longest, device=ids.device)[None, :] < real[:, None]).long()
        return ids, mask


class Texts:
    """One split of a `text_folder` dataset (root/{train,test}/<class>/<file>, classes sorted,
    files sorted, hidden entries skipped, each file read whole as UTF-8: xferlab's
    `data::text::folder`), tokenised as xferlab's `data::tokens` does: special tokens added,
    cut to max_length, no padding but to the longest text (id 0)."""

    def __init__(self, root, split, tokenizer, max_length, device):
        import transformers

        visible = lambda d: sorted(p for p in d.iterdir() if not p.name.startswith("."))
        assert (root / "train").is_dir() and (root / "test").is_dir(), \
            f"{root}: the twin reads text folders split into train/ and test/ only"
        classes = [p.name for p in visible(root / "train") if p.is_dir()]
        texts, labels = [], []
        for label, name in enumerate(classes):
            for path in visible(root / split / name):
                if path.is_file():
                    texts.append(path.read_bytes().decode("utf-8"))
                    labels.append(label)
        tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tokenizer))
        encoded = tok(texts, add_special_tokens=True, truncation=True, max_length=max_length,
                      padding=False)["input_ids"]
        lengths = np.array([len(e) for e in encoded])
        ids = np.zeros((len(encoded), lengths.max()), dtype=np.int64)
        for i, e in enumerate(encoded):
            ids[i, : len(e)] = e
        self.tokens = Tokens(torch.tensor(ids, device=device), lengths)
        self.labels = np.array(labels)
        self.device = device

    def select(self, classes, per_class, seed):
        """As Data.select."""
        chosen, targets = select_indices(self.labels, classes, per_class, seed)
        return (Tokens(self.tokens.ids[torch.tensor(chosen, device=self.device)],
                       self.tokens.lengths[chosen]),
                torch.tensor(targets, device=self.device))


class Net(nn.Module):
    """Blocks b1..bL run in order, then the head: t and f count `blocks`, as in xferlab."""

    def __init__(self, blocks, head):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def cnn6(classes):
    """DESIGN's cnn6: five blocks and a head, as xferlab's src/model builds it."""
    blocks = [
        nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
        nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 256), nn.ReLU()),
    ]
    return Net(blocks, nn.Linear(256, classes))


def efficientnet_blocks(model):
    """timm's EfficientNet as xferlab's nine blocks: stem, the 7 stages, the final 1x1 conv."""
    return [nn.Sequential(model.conv_stem, model.bn1), *model.blocks,
            nn.Sequential(model.conv_head, model.bn2)]


def efficientnet_lite0(classes, channels=3):
    """EfficientNet-Lite0 with a new head, initialised as xferlab does: convolutions uniform
    in +-1/sqrt(fan_in) (PyTorch's default), BatchNorm weight 1, bias 0, mean 0, var 1."""
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0,
                              in_chans=channels)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            m.reset_parameters()
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, classes))
    return Net(efficientnet_blocks(model), head)


# EfficientNet-PyTorch's names inside an MBConv to timm's: stage 0's DepthwiseSeparableConv
# has no expansion and numbers its BatchNorms from 1; InvertedResidual's three are bn1..bn3.
SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
            "_project_conv": "conv_pwl", "_bn2": "bn3"}
OUTSIDE = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
           "_fc": "classifier"}
STAGE_BLOCKS = [1, 2, 2, 3, 3, 4, 1]  # _blocks.0.._blocks.15, as xferlab's efficientnet::STAGES


def timm_name(name):
    """timm's name for an EfficientNet-PyTorch (Lite) tensor: `_blocks.N.` becomes
    `blocks.S.I.` (stage S's I-th block)."""
    parts = name.split(".")
    if parts[0] != "_blocks":
        return ".".join([OUTSIDE[parts[0]], *parts[1:]])
    n = int(parts[1])
    stage = next(s for s in range(7) if n < sum(STAGE_BLOCKS[: s + 1]))
    within = n - sum(STAGE_BLOCKS[:stage])
    layer = (SEPARABLE if stage == 0 else INVERTED)[parts[2]]
    return ".".join(["blocks", str(stage), str(within), layer, *parts[3:]])


def load_efficientnet(checkpoint):
    """The ImageNet model from an EfficientNet-PyTorch checkpoint, every tensor mapped and
    loaded strictly (an unknown name or a missing tensor raises)."""
    import timm

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False,
                              num_classes=state["_fc.weight"].shape[0])
    model.load_state_dict({timm_name(k): v for k, v in state.items()}, strict=True)
    return model


# tests/pretrained.rs's photos and the ImageNet classes that count as right for each.
PHOTOS = [("chelsea.png", [281, 282, 285]), ("coffee.png", [967, 968, 504]),
          ("rocket.jpg", [657, 744, 812])]


@torch.no_grad()
def check_photos(model, directory):
    """The loaded checkpoint names the photos as tests/pretrained.rs asks of xferlab's import:
    shorter side resized to 224 (bilinear, antialiased), centre crop, ImageNet's mean and std;
    a right class in the top 5 of each."""
    from PIL import Image

    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    model.eval()
    for file, right in PHOTOS:
        image = Image.open(Path(directory) / file).convert("RGB")
        w, h = image.size
        w, h = (224, 224 * h // w) if w <= h else (224 * w // h, 224)
        image = image.resize((w, h), Image.BILINEAR)
        left, top = round((w - 224) / 2), round((h - 224) / 2)
        image = image.crop((left, top, left + 224, top + 224))
        x = torch.tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1) / 255.0
        x = ((x - mean[:, None, None]) / std[:, None, None])[None]
        top5 = model(x.to(next(model.parameters()).device)).softmax(1)[0].topk(5)
        listed = ", ".join(f"{c} ({p:.3f})" for p, c in zip(top5.values.tolist(), top5.indices.tolist()))
        print(f"{file}: top-5 {listed}", flush=True)
        assert set(top5.indices.tolist()) & set(right), f"{file}: none of {right} in the top 5"


class BertNet(nn.Module):
    """A Hugging Face BertModel (no pooler) cut into xferlab's blocks: the embeddings, then each
    encoder layer, the last one pooling; then the head."""

    def __init__(self, bert, classes, pooling):
        super().__init__()
        self.bert, self.pooling = bert, pooling
        self.head = nn.Linear(bert.config.hidden_size, classes)

    @property
    def blocks(self):
        return [self.bert.embeddings, *self.bert.encoder.layer]

    def forward(self, inputs):
        ids, mask = inputs
        hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        if self.pooling == "cls":
            return self.head(hidden[:, 0])
        m = mask.unsqueeze(2).to(hidden.dtype)
        return self.head((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9))


def bert(model_spec, classes):
    """A fresh encoder of the plan's config (BERT's own init: normal(0, 0.02), the init
    xferlab copies) and a new head."""
    import transformers

    config = transformers.BertConfig(**model_spec["config"])
    return BertNet(transformers.BertModel(config, add_pooling_layer=False), classes,
                   model_spec.get("pooling") or "cls")


def load_bert(checkpoint, model_spec):
    """The pretrained encoder from a Hugging Face folder (or a file in one); every tensor the
    encoder needs is present."""
    import transformers

    directory = checkpoint if checkpoint.is_dir() else checkpoint.parent
    model, info = transformers.BertModel.from_pretrained(
        directory, add_pooling_layer=False, output_loading_info=True)
    assert not info["missing_keys"], f"{directory}: missing {info['missing_keys']}"
    return BertNet(model, 1, model_spec.get("pooling") or "cls")


def build(model_spec, classes, channels):
    arch = model_spec["arch"]
    if arch == "cnn6":
        return cnn6(classes)
    if arch == "efficientnet_lite0":
        return efficientnet_lite0(classes, channels)
    if arch == "bert":
        return bert(model_spec, classes)
    raise SystemExit(f"the twin builds cnn6, efficientnet_lite0 and bert, not {arch}")


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


def schedule_factor(schedule, step, steps):
    """What lr is multiplied by at `step` (from 0) of `steps`: xferlab's ScheduleSpec::factor,
    Hugging Face's formulas (step 0 of a warmup included: factor 0)."""
    warmup = schedule.get("warmup_steps") or 0
    if step < warmup:
        return step / max(warmup, 1)
    progress = (step - warmup) / max(steps - warmup, 1)
    decay = schedule.get("decay") or "constant"
    if decay == "linear":
        return max(1.0 - progress, 0.0)
    if decay == "cosine":
        return max(0.5 * (1.0 + math.cos(math.pi * progress)), 0.0)
    return 1.0


def optimizer_for(spec, parameters):
    """xferlab's optimizers: Adam; AdamW (weight decay 0.01 unless given; decoupled, as xferlab
    applies any decay to Adam too); SGD with momentum 0.9 unless given."""
    kind, lr, decay = spec["optimizer"], spec["lr"], spec.get("weight_decay")
    if kind == "adamw" or (kind == "adam" and decay):
        default = 0.01 if kind == "adamw" else 0.0
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=default if decay is None else decay)
    if kind == "adam":
        return torch.optim.Adam(parameters, lr=lr)
    if kind == "sgd":
        momentum = spec.get("momentum")
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9 if momentum is None else momentum,
                               weight_decay=decay or 0.0)
    raise SystemExit(f"the twin has no optimizer {kind}")


UNSUPPORTED = ["layer_lr_decay", "head_lr", "early_stopping", "unfreeze_every", "lora", "auto_depth"]


def train(model, x, y, spec, frozen, seed):
    """Trains the blocks after `frozen` and the head; returns the number of steps."""
    given = [k for k in UNSUPPORTED if spec.get(k) is not None]
    assert not given, f"the twin does not do {', '.join(given)}"
    counted = {id(p) for m in [*model.blocks, model.head] for p in m.parameters()}
    assert all(id(p) in counted for p in model.parameters()), "a parameter outside the blocks"
    for i, block in enumerate(model.blocks):
        for p in block.parameters():
            p.requires_grad = i >= frozen
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = optimizer_for(spec, parameters)
    examples = len(y)
    batch = min(spec["batch_size"], examples)
    steps = spec["steps"] or spec["epochs"] * -(-examples // batch)
    schedule = spec.get("schedule")
    generator = torch.Generator(device=y.device).manual_seed(seed)
    order, next_at = None, examples
    loss_sum = torch.zeros((), device=y.device)
    model.train()
    for block in model.blocks[:frozen]:
        block.eval()
    for step in range(1, steps + 1):
        parts, need = [], batch
        while need:  # successive permutations; a batch may span two, as in xferlab
            if next_at == examples:
                order = torch.randperm(examples, device=y.device, generator=generator)
                next_at = 0
            take = min(need, examples - next_at)
            parts.append(order[next_at : next_at + take])
            next_at, need = next_at + take, need - take
        indices = torch.cat(parts)
        loss = nn.functional.cross_entropy(model(x[indices]), y[indices])
        if schedule:
            set_lr(optimizer, spec["lr"] * schedule_factor(schedule, step - 1, steps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach()
        if step % spec["log_every"] == 0 or step == steps:
            if not torch.isfinite(loss_sum):
                raise RuntimeError(f"loss not finite by step {step}")
            loss_sum.zero_()
    return steps


@torch.no_grad()
def evaluate(model, x, y, batch=1024):
    model.eval()
    correct, loss = 0, 0.0
    for start in range(0, len(y), batch):
        logits = model(x[start : start + batch])
        target = y[start : start + batch]
        loss += nn.functional.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(1) == target).sum()
    return float(correct) / len(y), float(loss) / len(y)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("plan", type=Path)
    parser.add_argument("data", help="the IDX folder for every idx dataset, or - for the plan's")
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--spec-dir", type=Path, default=Path.cwd(),
                        help="what relative paths in the plan are relative to (the spec's folder)")
    parser.add_argument("--check-photos", type=Path, metavar="DIR",
                        help="classify assets/photos with an ImageNet source first (untimed)")
    parser.add_argument("--keep-denormals", action="store_true",
                        help="do not flush subnormal floats to zero on the CPU")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    torch.set_flush_denormal(not args.keep_denormals)
    device = torch.device(args.device)
    plan = json.loads(args.plan.read_text())
    resolve = lambda p: Path(p) if Path(p).is_absolute() else args.spec_dir / p
    first = plan["trials"][0]["config"]
    model_spec = first["model"]
    arch = model_spec["arch"]

    # The datasets, once, untimed.
    started = time.perf_counter()
    splits = {}

    def dataset(name, split):
        if (name, split) not in splits:
            spec = first["datasets"][name]
            if spec["format"] == "idx":
                directory = Path(args.data) if args.data != "-" else resolve(spec["dir"])
                splits[name, split] = Data(directory, split, spec, device)
            elif spec["format"] == "text_folder":
                splits[name, split] = Texts(
                    resolve(spec["dir"]), split, resolve(model_spec["tokenizer"]),
                    model_spec.get("max_length") or 128, device)
            else:
                raise SystemExit(f"the twin reads idx and text_folder datasets, not {spec['format']}")
        return splits[name, split]

    for trial in plan["trials"]:
        for selection in trial["config"]["target"].values():
            dataset(selection["dataset"], selection["split"])
        pretrain = (trial["config"]["source"] or {}).get("pretrain")
        if pretrain:
            dataset(pretrain["data"]["dataset"], pretrain["data"]["split"])
    channels = first["datasets"][first["target"]["train"]["dataset"]].get("channels") or 1
    data_seconds = time.perf_counter() - started

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # The source models, once: pretrained, or read from their checkpoints.
    sync()
    started = time.perf_counter()
    sources, imagenet = {}, None
    for trial in plan["trials"]:
        source_spec = trial["config"]["source"]
        key = json.dumps(source_spec, sort_keys=True)
        if trial["config"]["transfer_depth"] == 0 or key in sources:
            continue
        if source_spec.get("pretrain"):
            pretrain = source_spec["pretrain"]
            torch.manual_seed(pretrain["seed"])
            data = pretrain["data"]
            x, y = dataset(data["dataset"], data["split"]).select(
                data["classes"], data["per_class"], pretrain["seed"])
            source = build(model_spec, len(data["classes"]), channels).to(device)
            train(source, x, y, pretrain["train"], 0, pretrain["seed"])
        elif source_spec.get("checkpoint") and arch == "efficientnet_lite0":
            imagenet = load_efficientnet(resolve(source_spec["checkpoint"]))
            source = Net(efficientnet_blocks(imagenet), imagenet.classifier).to(device)
        elif source_spec.get("checkpoint") and arch == "bert":
            source = load_bert(resolve(source_spec["checkpoint"]), model_spec).to(device)
        else:
            raise SystemExit(f"the twin cannot make source {key} for {arch}")
        sources[key] = source
    sync()
    pretrain_seconds = time.perf_counter() - started
    if args.check_photos and imagenet is not None:
        check_photos(imagenet, args.check_photos)

    results = []
    started = time.perf_counter()
    for trial in plan["trials"]:
        trial_started = time.perf_counter()
        config = trial["config"]
        target = config["target"]
        seed, t, f = config["seed"], config["transfer_depth"], config["freeze_depth"]
        assert not config.get("adapter") and not config.get("auto_depth"), "the twin does (t, f) only"
        torch.manual_seed(seed)
        train_data = dataset(target["train"]["dataset"], target["train"]["split"])
        x, y = train_data.select(target["train"]["classes"], target["train"]["per_class"], seed)
        ex, ey = dataset(target["eval"]["dataset"], target["eval"]["split"]).select(
            target["eval"]["classes"], target["eval"]["per_class"], seed + 1_000_003)
        classes = target["train"]["classes"]
        classes = len(np.unique(train_data.labels)) if classes is None else len(classes)
        model = build(config["model"], classes, channels).to(device)
        if t:
            source = sources[json.dumps(config["source"], sort_keys=True)]
            for i in range(t):
                model.blocks[i].load_state_dict(source.blocks[i].state_dict())
        train(model, x, y, config["train"], f, seed)
        accuracy, loss = evaluate(model, ex, ey, batch=128 if isinstance(ex, Tokens) else 1024)
        results.append({"id": trial["id"], "strategies": trial["strategies"], "axes": trial["axes"],
                        "transfer_depth": t, "freeze_depth": f, "accuracy": accuracy, "loss": loss,
                        "seconds": time.perf_counter() - trial_started})
        print(f"[{len(results)}/{len(plan['trials'])}] {'='.join(trial['strategies'])} t={t} f={f} "
              f"{trial['axes']} accuracy {accuracy:.4f} ({results[-1]['seconds']:.1f}s)", flush=True)
    sync()
    sweep_seconds = time.perf_counter() - started + pretrain_seconds
    args.out.write_text(json.dumps({
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "threads": torch.get_num_threads(), "arch": arch,
        "flush_denormal": not args.keep_denormals,
        "data_seconds": data_seconds, "pretrain_seconds": pretrain_seconds,
        "sweep_seconds": sweep_seconds, "trials": results}, indent=1))


if __name__ == "__main__":
    main()
