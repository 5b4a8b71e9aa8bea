#!/usr/bin/env python3
"""The yardstick for `just bench-gpu`: xferlab's sweep written the usual way in PyTorch.

Eager mode; one trial after another; frozen blocks get requires_grad=False and still run
forward every step; the dataset sits on the device and batches are gathered there (a fair,
fast baseline, not a DataLoader). It runs exactly the trials of `xferlab plan SPEC --json`
(read from the file given), with their steps, batch sizes, learning rates and seeds: cnn6 on
Fashion-MNIST, the source model pretrained once, then every (transfer_depth, freeze_depth,
per_class, seed). Which images a seed draws differs from xferlab's (another generator), so
accuracies agree as averages over seeds, not trial by trial.

Usage: pytorch_twin.py PLAN.json FMNIST_DIR OUT.json [--device cuda]
Writes OUT.json: pretrain_seconds, sweep_seconds, and one result per trial.
"""

import argparse
import gzip
import json
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


def cnn6(classes):
    """DESIGN's cnn6: five blocks and a head, as xferlab's src/model builds it."""
    return nn.ModuleList(
        [
            nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
            nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
            nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 256), nn.ReLU()),
            nn.Linear(256, classes),  # the head
        ]
    )


def forward(model, x):
    for module in model:
        x = module(x)
    return x


class Data:
    """One split, standardised, on the device."""

    def __init__(self, directory, split, mean, std, device):
        images, labels = load_split(directory, split)
        self.images = torch.tensor((images.astype(np.float32) / 255.0 - mean) / std, device=device)
        self.images = self.images.unsqueeze(1)
        self.labels = labels.astype(np.int64)
        self.device = device

    def select(self, classes, per_class, seed):
        """The chosen images and labels relabelled 0..len(classes) in the order given."""
        rng = np.random.default_rng(seed)
        chosen, targets = [], []
        for new_label, c in enumerate(classes):
            indices = np.flatnonzero(self.labels == c)
            if per_class is not None:
                indices = rng.permutation(indices)[:per_class]
            chosen.append(indices)
            targets.append(np.full(len(indices), new_label))
        chosen = torch.tensor(np.concatenate(chosen), device=self.device)
        targets = torch.tensor(np.concatenate(targets), device=self.device)
        return self.images[chosen], targets


def train(model, x, y, spec, frozen, seed):
    """Trains the blocks after `frozen` and the head; returns the number of steps."""
    for i, module in enumerate(model):
        for p in module.parameters():
            p.requires_grad = i >= frozen
    parameters = [p for p in model.parameters() if p.requires_grad]
    assert spec["optimizer"] == "adam", "the twin does Adam only"
    optimizer = torch.optim.Adam(parameters, lr=spec["lr"])
    examples = len(y)
    batch = min(spec["batch_size"], examples)
    steps = spec["steps"] or spec["epochs"] * -(-examples // batch)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    order, next_at = None, examples
    loss_sum = torch.zeros((), device=x.device)
    model.train()
    for step in range(1, steps + 1):
        parts, need = [], batch
        while need:  # successive permutations; a batch may span two, as in xferlab
            if next_at == examples:
                order = torch.randperm(examples, device=x.device, generator=generator)
                next_at = 0
            take = min(need, examples - next_at)
            parts.append(order[next_at : next_at + take])
            next_at, need = next_at + take, need - take
        indices = torch.cat(parts)
        loss = nn.functional.cross_entropy(forward(model, x[indices]), y[indices])
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
        logits = forward(model, x[start : start + batch])
        target = y[start : start + batch]
        loss += nn.functional.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(1) == target).sum()
    return float(correct) / len(y), float(loss) / len(y)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("plan", type=Path)
    parser.add_argument("fmnist_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    device = torch.device(args.device)
    plan = json.loads(args.plan.read_text())
    first = plan["trials"][0]["config"]
    assert first["model"]["arch"] == "cnn6", "the twin builds cnn6 only"
    dataset = next(iter(first["datasets"].values()))
    mean, std = dataset["mean"], dataset["std"]
    splits = {s: Data(args.fmnist_dir, s, mean, std, device) for s in ("train", "test")}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # The source model, once.
    sync()
    started = time.perf_counter()
    source_spec = next(t["config"]["source"] for t in plan["trials"] if t["config"]["source"])
    pretrain = source_spec["pretrain"]
    torch.manual_seed(pretrain["seed"])
    data = pretrain["data"]
    x, y = splits[data["split"]].select(data["classes"], data["per_class"], pretrain["seed"])
    source = cnn6(len(data["classes"])).to(device)
    train(source, x, y, pretrain["train"], 0, pretrain["seed"])
    sync()
    pretrain_seconds = time.perf_counter() - started

    results = []
    started = time.perf_counter()
    for trial in plan["trials"]:
        config = trial["config"]
        target = config["target"]
        seed, t, f = config["seed"], config["transfer_depth"], config["freeze_depth"]
        torch.manual_seed(seed)
        x, y = splits[target["train"]["split"]].select(
            target["train"]["classes"], target["train"]["per_class"], seed
        )
        ex, ey = splits[target["eval"]["split"]].select(
            target["eval"]["classes"], target["eval"]["per_class"], seed + 1_000_003
        )
        model = cnn6(len(target["train"]["classes"])).to(device)
        for i in range(t):
            model[i].load_state_dict(source[i].state_dict())
        train(model, x, y, config["train"], f, seed)
        accuracy, loss = evaluate(model, ex, ey)
        results.append({"id": trial["id"], "strategies": trial["strategies"], "axes": trial["axes"],
                        "transfer_depth": t, "freeze_depth": f, "accuracy": accuracy, "loss": loss})
        print(f"[{len(results)}/{len(plan['trials'])}] {'='.join(trial['strategies'])} t={t} f={f} "
              f"{trial['axes']} accuracy {accuracy:.4f}", flush=True)
    sync()
    sweep_seconds = time.perf_counter() - started + pretrain_seconds
    args.out.write_text(json.dumps({
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "pretrain_seconds": pretrain_seconds,
        "sweep_seconds": sweep_seconds, "trials": results}, indent=1))


if __name__ == "__main__":
    main()
