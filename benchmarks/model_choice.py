"""Two models' `darefuse evaluate` reports on the same development sets, side by side: the figures a rule for
replacing the bundled model names (Dice, class, uncertainty, false tumour, meningioma outside the mask given
out, registration error), each set's and, over the sets, their mean (a count: its sum); then the mask given out
at each tumour margin scored, each set's mean brain-mask Dice (7 decimals: a rule's threshold can lie that close)
and meningioma voxels outside. It prints; the rule and its verdict are in the model card.

    .venv/bin/python benchmarks/model_choice.py --old V4_SET1.json V4_SET2.json --new V5_SET1.json V5_SET2.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import mean

REGIONS = ("WT", "TC", "ET")
COUNTS = ("meningioma outside",)


def one_model(path: str) -> tuple:
    """A `darefuse evaluate` report of one model: (its name, its figures, the seed range of its set). The name
    says the brain-mask network too when the report's was a candidate (`evaluate --brainmask`)."""
    report = json.loads(Path(path).read_text())
    if len(report["models"]) != 1:
        raise SystemExit(f"{path}: one model per report, found {len(report['models'])}")
    (name, model), = report["models"].items()
    mask = report.get("brainmask") or {}
    if mask and not mask.get("bundled", True):
        name = f"{name} + {mask['version']}"
    return name, model, f"{min(report['data']['seeds'])}-{max(report['data']['seeds'])}"


def figures(name: str, model: dict, data: str) -> dict:
    """The rule's figures of one report's model."""
    front_end = model.get("front_end", {})
    return {"model": name, "data": data,
            **{r: model["post"][r]["dice"] for r in REGIONS},
            **{f"tumour {r}": model["post_tumour_cases"][r]["dice"] for r in REGIONS},
            "class": model["classification"]["accuracy"],
            "error-AUROC": model["uncertainty"]["error_auroc"],
            "FP mL": model["false_positive_ml_tumour_free"]["after_class_gate"],
            "meningioma outside": front_end.get("meningioma_voxels_outside_mask"),
            **{f"registration {k} mm": front_end.get("registration_error_mm", {}).get(k) for k in ("median", "worst")}}


def margin_rows(name: str, model: dict, data: str) -> list:
    """One report's mask given out at each tumour margin (empty for a report without the front end)."""
    return [{"model": name, "data": data, "tumour margin mm": f"{m['tumour_margin_mm']:g}",
             "mask Dice": f"{m['brain_mask_dice']['mean']:.7f}", "meningioma outside": m["meningioma_voxels_outside_mask"]}
            for m in model.get("front_end", {}).get("by_tumour_margin", [])]


def table(rows) -> str:
    keys = [k for k in rows[0] if k != "model"]
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for row in rows:
        cells = [f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in keys]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_row(rows) -> dict:
    """Each figure's mean over the sets; a count of voxels is summed."""
    row = {"model": rows[0]["model"], "data": "the sets together"}
    for key in rows[0]:
        if key not in row:
            known = [r[key] for r in rows if r[key] is not None]
            row[key] = None if len(known) < len(rows) else sum(known) if key in COUNTS else mean(known)
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", nargs="+", required=True, help="the bundled model's reports, one per set")
    parser.add_argument("--new", nargs="+", required=True, help="the candidate's reports, the same sets in order")
    args = parser.parse_args(argv)
    if len(args.old) != len(args.new):
        parser.error("--old and --new need one report per set each")
    reports = [(one_model(a), one_model(b)) for a, b in zip(args.old, args.new)]
    old, new = [figures(*a) for a, _ in reports], [figures(*b) for _, b in reports]
    for a, b in zip(old, new):
        if a["data"] != b["data"]:
            parser.error(f"--old {a['data']} and --new {b['data']} are not the same set")
    rows = [row for pair in zip(old, new) for row in pair] + [mean_row(old), mean_row(new)]
    for row in rows:
        row.setdefault("mean Dice", mean(row[r] for r in REGIONS))
    print(table(rows))
    margins = [row for pair in reports for report in pair for row in margin_rows(*report)]
    if margins:
        print("\nThe mask given out at each tumour margin:\n\n" + table(margins))
    return 0


if __name__ == "__main__":
    sys.exit(main())
