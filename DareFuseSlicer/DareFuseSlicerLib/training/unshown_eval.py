"""What the unshown-tumour alarm (pipeline/unshown.py) would do on scored cases: false alarms on tumour-free
brains, alarms on tumour cases, and missed lesions found. Used by `darefuse evaluate` and
benchmarks/unshown_alarm.py, which applies the rule that chose the model card's setting."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from ..pipeline import unshown
from . import lesions

#: The candidates the rule chose among: P(tumour) thresholds, and the alarm's expected volumes (mL).
PROBABILITIES = (0.3, 0.5)
ALARM_ML = (0.25, 0.5, 1.0, 2.0, 4.0)
#: Parts a row keeps per threshold (the largest): enough for any candidate's alarm.
PARTS_KEPT = 10


def missed_lesions(truth: np.ndarray, shown: np.ndarray, voxel_ml: float) -> List[np.ndarray]:
    """Masks of the truth lesions (lesions.truth_lesions: from lesions.MIN_ML) that `shown` does not find."""
    labels, found = lesions.truth_lesions(truth, shown, voxel_ml)
    return [labels == label for label, _, hit in found if not hit]


def case_row(tumour_probability: np.ndarray, shown: np.ndarray, truth: np.ndarray, voxel_ml: float,
             probabilities: Sequence[float] = PROBABILITIES) -> dict:
    """For each threshold, the largest unshown parts: [expected mL, indices of the missed lesions each touches]."""
    missed = missed_lesions(truth, shown, voxel_ml)
    row = {"missed_lesions_ml": [round(float(m.sum()) * voxel_ml, 3) for m in missed], "parts": {}}
    for probability in probabilities:
        labelled = unshown.label_parts(tumour_probability, probability)
        parts = unshown.unshown_parts(tumour_probability, shown, voxel_ml, probability, labelled)[:PARTS_KEPT]
        values = sitk.GetArrayViewFromImage(labelled)
        touched = [set(np.unique(values[m]).tolist()) for m in missed]
        row["parts"][f"{probability:g}"] = [[round(p.expected_ml, 4), [i for i, t in enumerate(touched) if p.label in t]]
                                            for p in parts]
    return row


def candidate_table(rows: Sequence[dict]) -> List[dict]:
    """Each candidate's outcome over rows that hold "class" and a case_row's fields."""
    table = []
    for probability in PROBABILITIES:
        key = f"{probability:g}"
        for alarm_ml in ALARM_ML:
            outcome = {"probability": probability, "alarm_ml": alarm_ml, "tumour_free_alarms": 0,
                       "tumour_case_alarms": 0, "alarms_without_a_missed_lesion": 0,
                       "missed_lesions": 0, "missed_lesions_found": 0}
            for row in rows:
                alarming = [lesions for expected, lesions in row["parts"].get(key, []) if expected >= alarm_ml]
                found = set(i for lesions in alarming for i in lesions)
                tumour_free = row["class"] == "no_tumour"
                outcome["tumour_free_alarms" if tumour_free else "tumour_case_alarms"] += bool(alarming)
                outcome["alarms_without_a_missed_lesion"] += bool(alarming) and not found and not tumour_free
                outcome["missed_lesions"] += len(row["missed_lesions_ml"])
                outcome["missed_lesions_found"] += len(found)
            table.append(outcome)
    return table


def choose(table: Sequence[dict]) -> Dict[str, object]:
    """The rule written before its figures (README, Model card): no alarm on a tumour-free brain; then the most
    missed lesions found; then the fewest alarms on tumour cases that find none; then the largest alarm volume;
    then the higher threshold. None when no such candidate finds a missed lesion."""
    eligible = [c for c in table if c["tumour_free_alarms"] == 0 and c["missed_lesions_found"] > 0]
    if not eligible:
        return {"chosen": None, "why": "no candidate found a missed lesion without an alarm on a tumour-free brain"}
    best = max(eligible, key=lambda c: (c["missed_lesions_found"], -c["alarms_without_a_missed_lesion"],
                                        c["alarm_ml"], c["probability"]))
    return {"chosen": {"probability": best["probability"], "alarm_ml": best["alarm_ml"]}, "outcome": best}


def summary(rows: Sequence[dict], card: Optional[dict]) -> dict:
    """evaluate's report entry: every candidate's outcome on the rows holding "unshown", and the card's setting."""
    scored = [{"class": row["class"], **row["unshown"]} for row in rows if "unshown" in row]
    config, source = unshown.config_for_card(card)
    return {"candidates": candidate_table(scored), "card": {**config.as_dict(), "source": source}}


def markdown_lines(models: Dict[str, dict]) -> List[str]:
    """evaluate's section: the alarm at each candidate, the card's marked *."""
    entries = {name: r["unshown_alarm"] for name, r in models.items() if "unshown_alarm" in r}
    if not entries:
        return []
    lines = ["## Unshown tumour: the alarm at each candidate", "",
             "| model | P(tumour) >= | alarm mL | tumour-free alarms | tumour-case alarms | of which find no missed "
             "lesion | missed lesions found |", "|---|---|---|---|---|---|---|"]
    for name, entry in entries.items():
        card = entry["card"]
        for c in entry["candidates"]:
            mark = "*" if (c["probability"], c["alarm_ml"]) == (card["probability"], card["alarm_ml"]) else ""
            lines.append(f"| {name} | {c['probability']:g} | {c['alarm_ml']:g}{mark} | {c['tumour_free_alarms']} | "
                         f"{c['tumour_case_alarms']} | {c['alarms_without_a_missed_lesion']} | "
                         f"{c['missed_lesions_found']} of {c['missed_lesions']} |")
    return lines + ["", "A part: voxels whose P(tumour) = 1 - p(background) reaches the threshold, connected, with no "
                    "voxel in the map shown; its size is its expected volume (the sum of P(tumour)). The alarm "
                    f"sounds when a part reaches the alarm volume. A missed lesion: a truth lesion of at least "
                    f"{lesions.MIN_ML:g} mL with no shown voxel; found when an alarming part touches it.", ""]
