#!/usr/bin/env python3
"""PyTorch beside `just bench-efficientnet`: the same measurements of EfficientNet-Lite0 on the
CPU, with timm's `tf_efficientnet_lite0` (TensorFlow's "SAME" padding, ReLU6, no
squeeze-excitation: the arithmetic xferlab's efficientnet_lite0 follows), fresh weights.

Forward in inference mode at 224x224 and 32x32, batch 32, and one training step at 32x32
(train mode, forward, cross-entropy, backward; no optimizer): median of 5 after a warm-up,
on as many threads as xferlab uses (the machine's cores).

Usage (needs torch and timm, e.g. in a venv): python3 benches/pytorch_efficientnet.py
"""

import os
import statistics
import time

import timm
import torch

BATCH = 32
RUNS = 5


def median_seconds(run):
    run()
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    threads = os.cpu_count()
    torch.set_num_threads(threads)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    print(
        f"PyTorch {torch.__version__}, timm {timm.__version__}: tf_efficientnet_lite0, "
        f"batch {BATCH}, CPU ({threads} threads)"
    )
    model.eval()
    for size in (224, 32):
        x = torch.zeros(BATCH, 3, size, size)

        def forward():
            with torch.no_grad():
                model(x)

        seconds = median_seconds(forward)
        print(f"forward {size}x{size}: {seconds:.3f} s per batch, {BATCH / seconds:.1f} images/s")
    model.train()
    x = torch.randn(BATCH, 3, 32, 32)
    labels = torch.arange(BATCH) % 10

    def step():
        model.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), labels)
        loss.backward()

    seconds = median_seconds(step)
    print(f"training step 32x32: {seconds:.3f} s per batch, {BATCH / seconds:.1f} images/s")


if __name__ == "__main__":
    main()
