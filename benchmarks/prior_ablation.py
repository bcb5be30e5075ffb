"""The lesion-removal prior's ablation (issue 20 §1): the twin-trained prior (the bundled model), an inpainting
prior (`darefuse train-prior`), KLE residual priors (`darefuse fit-kle`) and a zero prior, on held-out folders;
prints a markdown table (training/prior_ablation.py says what is measured) and writes OUT.json / OUT.md.

    .venv/bin/python benchmarks/prior_ablation.py --inpainting RUN/darefuse.safetensors \
        --kle "KLE=KLE_RUN/darefuse.safetensors" \
        --data brats=HELD_OUT_BRATS --data clinical=HELD_OUT_CLINICAL --data lowfield=HELD_OUT_SITE --out REPORT
    .venv/bin/python benchmarks/prior_ablation.py --from-report REPORT.json   # the tables again, nothing re-scored
    .venv/bin/python benchmarks/prior_ablation.py --from-report REPORT.json --base "zero prior"   # paired with another

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
    parser.add_argument("--inpainting", "--twin-free", dest="inpainting", help="a model written by `darefuse train-prior`")
    parser.add_argument("--kle", action="append", default=[], metavar="[NAME=]MODEL",
                        help="a model written by `darefuse fit-kle`, shown as NAME (repeatable; default name: KLE)")
    parser.add_argument("--data", action="append", metavar="[LABEL=]DIR", help="held-out folder (repeatable)")
    parser.add_argument("--out", help="report stem (OUT.json, OUT.md)")
    parser.add_argument("--from-report", metavar="JSON", help="print the tables of a written report; scores nothing")
    parser.add_argument("--base", default="twin-trained", help="the variant the second table pairs the others with")
    parser.add_argument("--max-cases", type=int)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.from_report:
        results = json.loads(Path(args.from_report).read_text())["results"]
        print(markdown_table(results) + "\n" + comparison_table(results, args.base))
        return 0
    if not ((args.inpainting or args.kle) and args.data and args.out):
        parser.error("give --inpainting and/or --kle, --data and --out (or --from-report)")
    torch.set_num_threads(args.threads)
    kle = [(spec.rpartition("=")[0] or "KLE", spec.rpartition("=")[2]) for spec in args.kle]
    variants = load_variants(args.twin_trained, args.inpainting, kle)
    started = time.perf_counter()
    results, folders = {}, {}
    for spec in args.data:
        label, _, folder = spec.rpartition("=")
        folders[label or Path(folder).name] = folder
        results[label or Path(folder).name] = ablate_folder(folder, variants, args.max_cases,
                                                            log=lambda line: print(line, flush=True))
    models = {"twin-trained": args.twin_trained, "inpainting": args.inpainting, **dict(kle)}
    report = write_report(results, {k: v for k, v in models.items() if v}, args.out, folders)
    print(markdown_table(results) + "\n" + comparison_table(results, args.base))
    print(f"{time.perf_counter() - started:.0f} s; report: {report}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
