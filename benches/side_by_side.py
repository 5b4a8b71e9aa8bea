#!/usr/bin/env python3
"""Mean accuracy over seeds of each (strategies, t, f, data size) in an xferlab sweep and in
the PyTorch twin's results, side by side. Usage: side_by_side.py SWEEP_DIR TWIN.json"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def group(results):
    """(strategies, t, f, axes but seed) -> accuracies."""
    groups = defaultdict(list)
    for r in results:
        axes = tuple(sorted((k, v) for k, v in r["axes"].items() if k != "seed"))
        groups[("=".join(r["strategies"]), r["transfer_depth"], r["freeze_depth"], axes)].append(
            r["accuracy"])
    return groups


def main():
    sweep, twin = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
    records = [json.loads(p.read_text()) for p in sorted((sweep / "trials").glob("*.json"))]
    ours = group([dict(r, accuracy=r["eval"]["accuracy"]) for r in records
                  if r["status"] == "finished"])
    theirs = group(twin["trials"])
    print(f"{'strategies':<44} {'t':>2} {'f':>2} {'setting':<28} {'xferlab':>8} {'pytorch':>8} "
          f"{'diff':>7}")
    diffs = []
    for key in sorted(set(ours) | set(theirs), key=lambda k: (k[3], k[1], k[2], k[0])):
        strategies, t, f, axes = key
        a = statistics.mean(ours[key]) if key in ours else float("nan")
        b = statistics.mean(theirs[key]) if key in theirs else float("nan")
        diffs.append(a - b)
        setting = " ".join(f"{k.split('.')[-1]}={v}" for k, v in axes)
        print(f"{strategies:<44} {t:>2} {f:>2} {setting:<28} {a:>8.4f} {b:>8.4f} {a - b:>+7.4f}")
    finite = [d for d in diffs if d == d]
    print(f"mean accuracy difference (xferlab - pytorch) over {len(finite)} groups: "
          f"{statistics.mean(finite):+.4f}, largest {max(finite, key=abs):+.4f}")


if __name__ == "__main__":
    main()
