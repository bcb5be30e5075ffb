"""The class head's accuracy and confusion matrix on whole pre-processed cases (the brain box at 2 mm, all four
contrasts), as the pipeline feeds them to the network: a check of a model on its own training or validation
cases, which `darefuse evaluate` (held-out cases only) does not do. Uses, and if needed fills, the training
cache.

    .venv/bin/python benchmarks/class_on_cached_cases.py --model DareFuseSlicer/Resources/Models/darefuse.safetensors \
        --data data/train --data data/val --cache runs/cache
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "DareFuseSlicer"))
from DareFuseSlicerLib.constants import CLASSES, CONTRASTS  # noqa: E402
from DareFuseSlicerLib.network.model import DareFuseNet  # noqa: E402
from DareFuseSlicerLib.network.store import load_model  # noqa: E402
from DareFuseSlicerLib.training.dataset import build_cache, load_cases  # noqa: E402
from DareFuseSlicerLib.training.train import cache_dir_for  # noqa: E402


@torch.no_grad()
def confusion(model, cases) -> np.ndarray:
    matrix = np.zeros((len(CLASSES), len(CLASSES)), int)
    for case in cases:
        out = model(torch.from_numpy(case.image.astype(np.float32))[None], torch.ones(1, len(CONTRASTS)))
        matrix[case.class_index, int(DareFuseNet.class_logits(out).argmax(1))] += 1
    return matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", action="append", required=True, help="engine folder (repeatable)")
    parser.add_argument("--cache", help="the training cache root (default: DATA/.darefuse-cache)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model).eval()
    print(f"{model.card.get('version')} ({args.model})")
    for folder in args.data:
        matrix = confusion(model, load_cases(build_cache(folder, cache_dir_for(folder, args.cache))))
        print(f"{folder}: {np.trace(matrix)}/{matrix.sum()} right, accuracy {np.trace(matrix) / matrix.sum():.3f}")
        print("  truth \\ predicted: " + " ".join(f"{c[:10]:>10}" for c in CLASSES))
        for name, row in zip(CLASSES, matrix):
            print(f"  {name:>18}: " + " ".join(f"{v:>10d}" for v in row))


if __name__ == "__main__":
    main()
