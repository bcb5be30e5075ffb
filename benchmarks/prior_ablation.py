"""The lesion-removal prior's ablation (issue 20 §1): the twin-trained prior (the bundled model), a twin-free
prior (`darefuse train-prior`) and a zero prior, on held-out folders; prints a markdown table (training/
prior_ablation.py says what is measured) and writes OUT.json / OUT.md.

    .venv/bin/python benchmarks/prior_ablation.py --twin-free RUN/darefuse.safetensors \
        --data brats=HELD_OUT_BRATS --data clinical=HELD_OUT_CLINICAL --data lowfield=HELD_OUT_SITE --out REPORT
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "DareFuseSlicer"))
from DareFuseSlicerLib.training.prior_ablation import (  # noqa: E402
    ablate_folder,
    load_variants,
    markdown_table,
    write_report,
)

BUNDLED = Path(__file__).resolve().parents[1] / "DareFuseSlicer/Resources/Models/darefuse.safetensors"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--twin-trained", default=str(BUNDLED), help="default: the bundled model")
    parser.add_argument("--twin-free", required=True, help="a model written by `darefuse train-prior`")
    parser.add_argument("--data", action="append", required=True, metavar="[LABEL=]DIR", help="held-out folder")
    parser.add_argument("--out", required=True, help="report stem (OUT.json, OUT.md)")
    parser.add_argument("--max-cases", type=int)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = load_variants(args.twin_trained, args.twin_free)
    started = time.perf_counter()
    results = {}
    for spec in args.data:
        label, _, folder = spec.rpartition("=")
        results[label or Path(folder).name] = ablate_folder(folder, variants, args.max_cases,
                                                            log=lambda line: print(line, flush=True))
    report = write_report(results, {"twin-trained": args.twin_trained, "twin-free": args.twin_free}, args.out)
    print(markdown_table(results))
    print(f"{time.perf_counter() - started:.0f} s; report: {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
