"""The review-region settings (issue 18) tuned on cached predictions (benchmarks/review_cache.py): the margin
calibration, then every setting of review_efficiency.TUNE_GRID scored by review efficiency; prints the grid and
the chosen setting's efficiency against the baselines. `darefuse evaluate --tune` makes the same choice from the
pipeline's own predictions; this script makes the experiments cheap. --bands prints, instead, how often brain
voxels in each band of uncertainty are wrong (what the overlay threshold is set from).

    PYTHONPATH=DareFuseSlicer .venv/bin/python benchmarks/review_tuning.py --cache /work/data/review/cache/val
    PYTHONPATH=DareFuseSlicer .venv/bin/python benchmarks/review_tuning.py --cache /work/data/review/cache/val --bands
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "DareFuseSlicer"))
from DareFuseSlicerLib.pipeline.review import top_two_margin  # noqa: E402
from DareFuseSlicerLib.training import review_efficiency as efficiency  # noqa: E402


def load(folder: Path):
    cases = []
    for path in sorted(folder.glob("*.npz")):
        data = np.load(path)
        tumour = data["tumour"].astype(np.float32)
        margin = top_two_margin([1.0 - tumour.sum(0)] + list(tumour))
        cases.append({"case_id": path.stem, "tumour_class": str(data["tumour_class"]), "label": data["label"],
                      "truth": data["truth"], "uncertainty": data["uncertainty"].astype(np.float32),
                      "margin": margin, "spacing_zyx": tuple(data["spacing"][::-1].tolist())})
    return cases


BANDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 1.0001)


def uncertainty_bands(folder: Path) -> None:
    """Share of the brain's voxels and their error rate per band of uncertainty, over the cached cases."""
    counts, errors = np.zeros(len(BANDS) - 1), np.zeros(len(BANDS) - 1)
    for path in sorted(folder.glob("*.npz")):
        data = np.load(path)
        inside = data["inside"]
        band = np.searchsorted(BANDS, data["uncertainty"][inside], side="right") - 1
        counts += np.bincount(band, minlength=counts.size)[: counts.size]
        errors += np.bincount(band, (data["label"] != data["truth"])[inside], counts.size)[: counts.size]
    for low, high, count, error in zip(BANDS, BANDS[1:], counts, errors):
        print(f"uncertainty {low:.1f}-{min(high, 1.0):.1f}: {count / counts.sum():.3f} of brain voxels, "
              f"{error / max(count, 1):.4f} of them wrong, {error / errors.sum():.3f} of all wrong voxels")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", required=True)
    parser.add_argument("--check", help="another cache folder: the chosen setting scored on it")
    parser.add_argument("--json", help="also write the result here")
    parser.add_argument("--bands", action="store_true", help="print the uncertainty bands only")
    args = parser.parse_args()
    if args.bands:
        uncertainty_bands(Path(args.cache))
        return
    cases = load(Path(args.cache))
    config, summary, rows = efficiency.tune_review(cases, log=print)
    del cases
    print("chosen:", json.dumps(config.as_dict()))
    print(json.dumps(summary, indent=1))
    result = {"config": config.as_dict(), "summary": summary, "grid": rows}
    if args.check:
        checked = [efficiency.case_efficiency(efficiency.efficiency_case(
            c["label"], c["truth"], c["uncertainty"], c["margin"], c["spacing_zyx"], config, seed=i), config)
            for i, c in enumerate(load(Path(args.check)))]
        result["check"] = {"folder": args.check, "summary": efficiency.summarise(checked)}
        print(f"on {args.check}:", json.dumps(result["check"]["summary"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
