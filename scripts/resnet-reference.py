#!/usr/bin/env python3
"""torchvision's ResNet logits on weights anyone can rebuild: tests/data/resnet/torchvision.json.

No real ResNet weights can be fetched offline, and a random state dict is too big to commit
(resnet50: 100 MB). So every tensor is drawn from a counter-based generator (splitmix64)
that tests/resnet.rs repeats in Rust: the test rebuilds the same state dict under
torchvision's names, reads it through xferlab's checkpoint import, and must give these
logits within 1e-4.

Tensor number k (in byte order of torchvision's state-dict names, without BatchNorm's
num_batches_tracked) takes u_i = splitmix64(k << 32 | i) >> 40, divided by 2^24, for its
i-th value (row-major), and:
  conv and fc weights  (2u - 1) * sqrt(3 / fan_in)   (variance 1 / fan_in)
  BatchNorm weights    0.5 + 0.5u
  biases               0.2 (u - 0.5)                  (BatchNorm's and fc's)
  running_mean         0.2 (u - 0.5)
  running_var          0.5 + u
The input batch (2 x 3 x 61 x 77: odd sides test the padding arithmetic) takes stream
k = 1_000_000, values 2u - 1. Values are computed in float64 and rounded to float32.

Run (needs torch and torchvision, e.g. `pip install torch torchvision numpy` in a venv):
    python3 scripts/resnet-reference.py > tests/data/resnet/torchvision.json
"""

import json
import math
import sys

import numpy as np
import torch
import torchvision

INPUT_STREAM = 1_000_000
INPUT_SHAPE = (2, 3, 61, 77)
ARCHS = ["resnet18", "resnet34", "resnet50"]


def uniform(stream: int, n: int) -> np.ndarray:
    """u_0..u_{n-1} of `stream`, in [0, 1), as float64."""
    with np.errstate(over="ignore"):
        z = (np.uint64(stream) << np.uint64(32)) | np.arange(n, dtype=np.uint64)
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / float(1 << 24)


def value(name: str, shape: tuple, stream: int) -> torch.Tensor:
    n = math.prod(shape)
    u = uniform(stream, n)
    if name.endswith("running_var"):
        v = 0.5 + u
    elif name.endswith("running_mean") or name.endswith("bias"):
        v = 0.2 * (u - 0.5)
    elif len(shape) == 1:  # a BatchNorm weight
        v = 0.5 + 0.5 * u
    else:
        fan_in = math.prod(shape[1:])
        v = (2.0 * u - 1.0) * math.sqrt(3.0 / fan_in)
    return torch.from_numpy(v.astype(np.float32).reshape(shape))


def main() -> None:
    x = torch.from_numpy(
        (2.0 * uniform(INPUT_STREAM, math.prod(INPUT_SHAPE)) - 1.0)
        .astype(np.float32)
        .reshape(INPUT_SHAPE)
    )
    out = {
        "generator": "scripts/resnet-reference.py",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "input_shape": list(INPUT_SHAPE),
        "input_stream": INPUT_STREAM,
        "logits": {},
    }
    for arch in ARCHS:
        model = getattr(torchvision.models, arch)(weights=None)
        state = model.state_dict()
        names = sorted(n for n in state if not n.endswith("num_batches_tracked"))
        new = {n: value(n, tuple(state[n].shape), k) for k, n in enumerate(names)}
        model.load_state_dict(new, strict=False)
        model.eval()
        with torch.no_grad():
            logits = model(x)
        out["logits"][arch] = [[float(f"{v:.9g}") for v in row] for row in logits.tolist()]
        print(
            f"{arch}: {len(names)} tensors, logits in [{logits.min():.3f}, {logits.max():.3f}]",
            file=sys.stderr,
        )
    json.dump(out, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
