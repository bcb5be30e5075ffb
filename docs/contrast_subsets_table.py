"""One markdown table from `darefuse evaluate --contrasts ...` reports: a row per contrast subset (one model
per report; the first model of each). Prints the table; the README and docs/evaluation-darefuse-v7-contrasts.md
quote it.

    for c in flair t2 ...; do darefuse evaluate ... --contrasts $c --out runs/evaluation-v7-contrasts/$c; done
    .venv/bin/python docs/contrast_subsets_table.py runs/evaluation-v7.json runs/evaluation-v7-contrasts/*.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "DareFuseSlicer"))
from DareFuseSlicerLib.constants import CONTRASTS  # noqa: E402


def row(path: str) -> tuple:
    report = json.loads(Path(path).read_text())
    name, r = next(iter(report["models"].items()))
    given = report["data"].get("contrasts", list(CONTRASTS))
    dice = [r["post"][k]["dice"] for k in ("WT", "TC", "ET")]
    fp = r.get("false_positive_ml_tumour_free", {}).get("with_prior")
    cells = [" + ".join(given), *(f"{d:.3f}" for d in dice), f"{sum(dice) / 3:.3f}", f"{r['post']['WT']['hd95']:.1f}",
             f"{r['classification']['accuracy']:.3f}", f"{r['uncertainty']['error_auroc']:.3f}",
             "n/a" if fp is None else f"{fp:.2f}"]
    return (-len(given), [CONTRASTS.index(c) for c in given]), name, report["data"]["folder"], cells


def main(paths) -> None:
    rows = sorted(row(p) for p in paths)
    models, folders = {r[1] for r in rows}, {r[2] for r in rows}
    print(f"Model {', '.join(sorted(models))} on `{', '.join(sorted(folders))}`, only the listed contrasts given "
          "(the others missing), post-processing as in use.\n")
    print("| contrasts given | Dice WT | Dice TC | Dice ET | mean Dice | HD95 WT (mm) | class accuracy | "
          "uncertainty error-AUROC | FP mL on tumour-free |")
    print("|---|---|---|---|---|---|---|---|---|")
    for _, _, _, cells in rows:
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
