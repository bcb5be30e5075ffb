"""Choosing the enhancement rule (postprocess.reported_class) on development cases: for each candidate ET volume,
how many class decisions it would turn right and wrong. One row per case, as benchmarks/class_enhancement.py makes
them: the truth class, the class head's arg-max, the class reported without the rule and the shown volumes (mL)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

from ..constants import CLASSES
from ..pipeline.postprocess import PostprocessConfig, reported_class

#: The shown ET volumes (mL) at or below which a candidate rule acts; written before any figure of them.
CANDIDATES_ML = (0.0, 0.1, 0.5, 1.0)


def acts(row: dict, et_ml: float) -> bool:
    """Whether the rule with this ET volume would change the row's class (to glioma), by reported_class itself;
    a class another rule already changed (no_tumour for an empty map) is left alone. The rows are of runs given
    T1ce (the development runs had all four contrasts, none left out), so their ET is evidence."""
    shown, probabilities = row["shown_ml"], [row["class_probabilities"][c] for c in CLASSES]
    ruled = reported_class(PostprocessConfig(non_enhancing_glioma_ml=et_ml), probabilities, shown["WT"] > 0.0,
                           shown["ET"])
    return row["predicted_class"] == row["class_head"] != CLASSES[ruled]


def candidate_table(rows: Sequence[dict], candidates: Sequence[float] = CANDIDATES_ML) -> List[dict]:
    table = []
    for et_ml in candidates:
        acting = [row for row in rows if acts(row, et_ml)]
        made_right = sum(row["class"] == "glioma" for row in acting)
        made_wrong = sum(row["predicted_class"] == row["class"] for row in acting)
        right = sum(row["predicted_class"] == row["class"] for row in rows) + made_right - made_wrong
        table.append({"et_ml": et_ml, "acts": len(acting), "made_right": made_right, "made_wrong": made_wrong,
                      "accuracy": right / len(rows) if rows else 0.0})
    return table


def choose(table: Sequence[dict]) -> Dict[str, Optional[float]]:
    """Eligible: turns no right class wrong and at least one wrong class right; then the most turned right, then
    the smallest ET volume. None when no candidate is eligible (the rule is not adopted)."""
    eligible = [c for c in table if c["made_wrong"] == 0 and c["made_right"] > 0]
    if not eligible:
        return {"chosen": None, "why": "no candidate turns a wrong class right without turning a right one wrong"}
    best = min(eligible, key=lambda c: (-c["made_right"], c["et_ml"]))
    return {"chosen": best["et_ml"], "why": f"turns {best['made_right']} wrong classes right and none wrong"}

