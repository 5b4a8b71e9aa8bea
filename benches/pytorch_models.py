#!/usr/bin/env python3
"""PyTorch beside `benches/models.rs`: the same rows, measured the same way, in eager PyTorch.

EfficientNet-Lite0 is timm's `tf_efficientnet_lite0` (TensorFlow's "SAME" padding, ReLU6, no
squeeze-excitation: the arithmetic xferlab's efficientnet_lite0 follows), ResNet-18
torchvision's `resnet18`, MiniLM-L6 a Hugging Face `BertModel` of all-MiniLM-L6-v2's shape
with mean pooling; fresh weights. Forward passes in `eval()` under `torch.no_grad()` (224x224,
batch 32; 64 texts of 128 tokens); a training step in `train()`: forward, cross-entropy,
backward, no optimizer (96x96, batch 32; cnn6 28x28 grey, as in the small A-to-B sweep;
EfficientNet-Lite0 also at imagenet-to-fashion's 32x32: 256 forward, 32 trained). Median of 5 after a warm-up, on as many threads as
xferlab uses (the machine's cores).

Prints one tab-separated row per measurement: name, seconds, items, unit. Needs torch,
torchvision, timm and transformers (scripts/bench-models makes a venv with them).
"""

import os
import statistics
import time

import timm
import torch
import torchvision
import transformers
from pytorch_twin import cnn6

RUNS = 5


def median_seconds(run):
    run()
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def row(name, seconds, items, unit):
    print(f"{name}\t{seconds:.4f}\t{items}\t{unit}", flush=True)


def train_step_seconds(model, image):
    """A training step on 32 random images of shape `image`, labels 0..9: forward in train
    mode, cross-entropy, backward."""
    model.train()
    x = torch.randn(32, *image)
    labels = torch.arange(32) % 10

    def step():
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), labels).backward()

    return median_seconds(step)


def main():
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    models = {
        "efficientnet_lite0": lambda classes: timm.create_model(
            "tf_efficientnet_lite0", pretrained=False, num_classes=classes),
        "resnet18": lambda classes: torchvision.models.resnet18(num_classes=classes),
    }
    for name, make in models.items():
        model = make(1000).eval()
        x = torch.randn(32, 3, 224, 224)

        def forward():
            with torch.no_grad():
                model(x)

        row(f"{name} forward 224x224", median_seconds(forward), 32, "images")
        row(f"{name} train step 96x96", train_step_seconds(make(10), (3, 96, 96)), 32, "images")

    # EfficientNet-Lite0 at imagenet-to-fashion's 32x32 (evaluation's large batches forward).
    model = models["efficientnet_lite0"](10).eval()
    x = torch.randn(256, 3, 32, 32)

    def forward():
        with torch.no_grad():
            model(x)

    row("efficientnet_lite0 forward 32x32", median_seconds(forward), 256, "images")
    row("efficientnet_lite0 train step 32x32", train_step_seconds(model, (3, 32, 32)), 32, "images")

    # cnn6 as benches/pytorch_twin.py builds it (the small A-to-B sweep's network).
    row("cnn6 train step 28x28", train_step_seconds(cnn6(10), (1, 28, 28)), 32, "images")

    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
        intermediate_size=1536, max_position_embeddings=512, hidden_act="gelu")
    bert = transformers.BertModel(config, add_pooling_layer=False).eval()
    texts, tokens = 64, 128
    ids = (1000 + (torch.arange(texts * tokens) * 7919) % 29000).reshape(texts, tokens)
    mask = torch.ones(texts, tokens, dtype=torch.long)

    def embed():
        with torch.no_grad():
            hidden = bert(input_ids=ids, attention_mask=mask).last_hidden_state
            (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

    row("minilm_l6 embed 128 tokens", median_seconds(embed), texts, "texts")

    # minilm-to-spam's step (scratch, finetune): 16 texts of 64 tokens, mean pooling, a
    # linear head on two classes.
    head = torch.nn.Linear(config.hidden_size, 2)
    bert.train()
    ids, mask = ids[:16, :64].contiguous(), mask[:16, :64].contiguous()
    labels = torch.arange(16) % 2

    def step():
        bert.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        hidden = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        torch.nn.functional.cross_entropy(head(pooled), labels).backward()

    row("minilm_l6 train step 64 tokens", median_seconds(step), 16, "texts")


if __name__ == "__main__":
    main()
