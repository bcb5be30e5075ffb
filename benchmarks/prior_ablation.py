"""The lesion-removal prior's ablation (issue 20 §1): the twin-trained prior (the bundled model), a twin-free
prior (`darefuse train-prior`) and a zero prior, on held-out folders; prints a markdown table (training/
prior_ablation.py says what is measured) and writes OUT.json / OUT.md.

    .venv/bin/python benchmarks/prior_ablation.py --twin-free RUN/darefuse.safetensors \
        --data brats=HELD_OUT_BRATS --data clinical=HELD_OUT_CLINICAL --data lowfield=HELD_OUT_SITE --out REPORT
    .venv/bin/python benchmarks/prior_ablation.py --from-report REPORT.json   # the tables again, nothing re-scored

Two tables: each variant's means, and each variant minus the twin-trained prior on the same cases (mean
[bootstrap 95 % interval] (cases better / worse)).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "DareFuseSlicer"))
from DareFuseSlicerLib.training.prior_ablation import (  # noqa: E402
    ablate_folder,
    comparison_table,
    load_variants,
    markdown_table,
    write_report,
)

BUNDLED = Path(__file__).resolve().parents[1] / "DareFuseSlicer/Resources/Models/darefuse.safetensors"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--twin-trained", default=str(BUNDLED), help="default: the bundled model")
    parser.add_argument("--twin-free", help="a model written by `darefuse train-prior`")
    parser.add_argument("--data", action="append", metavar="[LABEL=]DIR", help="held-out folder (repeatable)")
    parser.add_argument("--out", help="report stem (OUT.json, OUT.md)")
    parser.add_argument("--from-report", metavar="JSON", help="print the tables of a written report; scores nothing")
    parser.add_argument("--max-cases", type=int)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.from_report:
        results = json.loads(Path(args.from_report).read_text())["results"]
        print(markdown_table(results) + "\n" + comparison_table(results))
        return 0
    if not (args.twin_free and args.data and args.out):
        parser.error("give --twin-free, --data and --out (or --from-report)")
    torch.set_num_threads(args.threads)
    variants = load_variants(args.twin_trained, args.twin_free)
    started = time.perf_counter()
    results, folders = {}, {}
    for spec in args.data:
        label, _, folder = spec.rpartition("=")
        folders[label or Path(folder).name] = folder
        results[label or Path(folder).name] = ablate_folder(folder, variants, args.max_cases,
                                                            log=lambda line: print(line, flush=True))
    report = write_report(results, {"twin-trained": args.twin_trained, "twin-free": args.twin_free}, args.out, folders)
    print(markdown_table(results) + "\n" + comparison_table(results))
    print(f"{time.perf_counter() - started:.0f} s; report: {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
