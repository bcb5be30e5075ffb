"""Lesion-wise detection: which truth lesions the map shown finds, and which shown lesions have no truth.

The BraTS-convention Dice is one number per case, dominated by its largest lesion: on six development sets of raw
studies 46 truth lesions of at least 0.5 mL had no shown voxel, in 33 of the 108 tumour cases
(docs/unshown-alarm-dev.md). A lesion here is a 26-connected component of the whole tumour; found when one
shown voxel lies in it (detection only: BraTS 2023's lesion-wise Dice also scores each lesion's overlap, with
its own matching rules, which this does not reproduce). MONAI has no lesion-wise metric; SimpleITK labels the
components.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

#: Truth lesions count from this volume up (the engine's smallest are a few tenths of a mL).
MIN_ML = 0.5
#: Size bands (mL) of the summary: [0.5, 1), [1, 2), [2, 5), [5, inf).
BANDS_ML = (0.5, 1.0, 2.0, 5.0)


def components(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """26-connected components of `mask` (labels 1..n, 0 elsewhere) and their voxel counts (index 0: background)."""
    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True))
    return labels, np.bincount(labels.ravel())


def truth_lesions(truth: np.ndarray, shown: np.ndarray, voxel_ml: float) -> Tuple[np.ndarray, List[Tuple[int, float, bool]]]:
    """The truth's whole-tumour components and, for those of at least MIN_ML: (label, mL, found by `shown`)."""
    labels, sizes = components(np.asarray(truth) > 0)
    touched = set(np.unique(labels[np.asarray(shown) > 0]).tolist())
    return labels, [(c, float(sizes[c]) * voxel_ml, c in touched) for c in range(1, sizes.size)
                    if sizes[c] * voxel_ml >= MIN_ML]


def lesion_row(shown: np.ndarray, truth: np.ndarray, voxel_ml: float) -> dict:
    """One case: its truth lesions' volumes and whether each was found; the shown lesions with no truth voxel."""
    _, lesions = truth_lesions(truth, shown, voxel_ml)
    shown_labels, shown_sizes = components(np.asarray(shown) > 0)
    hit = set(np.unique(shown_labels[np.asarray(truth) > 0]).tolist())
    return {"truth_ml": [round(ml, 3) for _, ml, _ in lesions], "found": [found for _, _, found in lesions],
            "false_ml": [round(float(shown_sizes[c]) * voxel_ml, 3) for c in range(1, shown_sizes.size) if c not in hit]}


def _band(ml: float) -> str:
    edges = list(BANDS_ML) + [float("inf")]
    for low, high in zip(edges, edges[1:]):
        if low <= ml < high:
            return f"{low:g}-{high:g} mL" if high != float("inf") else f"{low:g} mL and more"
    return "below the minimum"


def summary(rows: Sequence[dict]) -> dict:
    """Over rows holding "class" and "lesions" (lesion_row): lesions found per size band and in all, and the
    false lesions, on tumour cases and on tumour-free brains."""
    found: Dict[str, List[int]] = {}
    for row in rows:
        for ml, hit in zip(row["lesions"]["truth_ml"], row["lesions"]["found"]):
            found.setdefault(_band(ml), [0, 0])[0] += int(hit)
            found[_band(ml)][1] += 1
    bands = [{"band": b, "found": found.get(b, [0, 0])[0], "lesions": found.get(b, [0, 0])[1]}
             for b in (_band(ml) for ml in BANDS_ML)]
    tumour = [row for row in rows if row["class"] != "no_tumour"]
    free = [row for row in rows if row["class"] == "no_tumour"]
    return {
        "min_ml": MIN_ML, "bands": bands,
        "found": sum(b["found"] for b in bands), "lesions": sum(b["lesions"] for b in bands),
        "tumour_cases_missing_a_lesion": sum(not all(row["lesions"]["found"]) for row in tumour),
        "tumour_cases": len(tumour),
        "false_lesions_tumour_cases": sum(len(row["lesions"]["false_ml"]) for row in tumour),
        "false_lesions_tumour_free": sum(len(row["lesions"]["false_ml"]) for row in free),
        "tumour_free_cases": len(free),
    }


def markdown_lines(models: Dict[str, dict]) -> List[str]:
    """evaluate's section: lesions found per size band, and false lesions."""
    entries = {name: r["lesions"] for name, r in models.items() if "lesions" in r}
    if not entries:
        return []
    bands = [_band(ml) for ml in BANDS_ML]
    lines = ["## Lesion-wise detection (the map shown)", "",
             "| model | truth lesions found | " + " | ".join(bands)
             + " | tumour cases missing a lesion | false lesions: tumour cases | tumour-free brains |",
             "|---|---|" + "---|" * len(bands) + "---|---|---|"]
    for name, s in entries.items():
        lines.append(f"| {name} | {s['found']} of {s['lesions']} | "
                     + " | ".join(f"{b['found']} of {b['lesions']}" for b in s["bands"])
                     + f" | {s['tumour_cases_missing_a_lesion']} of {s['tumour_cases']} | "
                     f"{s['false_lesions_tumour_cases']} | {s['false_lesions_tumour_free']} "
                     f"(in {s['tumour_free_cases']}) |")
    return lines + ["", f"A lesion: a connected component of the whole tumour (truth lesions from {MIN_ML:g} mL); "
                    "found when one shown voxel lies in it; a false lesion: a shown component with no truth voxel. "
                    "Post-processed, with the class gate, as shown to a user.", ""]
