"""What the class gate would do at each candidate probability, scored from `darefuse evaluate`'s per-case rows.

The gate only chooses, case by case, between the post-processed map and an empty one (pipeline/postprocess.py),
so each candidate is scored without running the network again: a cleared tumour-free case scores 1 on every
region (BraTS convention), a cleared tumour case 0 on each region its truth holds. Rows written before
`truth_ml` existed cannot say which regions a tumour case's truth holds; a candidate that would clear such a
case is left unscored rather than guessed.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from ..constants import REGIONS


def _ungated_dice(row: dict) -> List[float]:
    post = row.get("post_without_class_gate", row["post"])
    return [float(post[r]["dice"]) for r in REGIONS]


def _cleared_dice(row: dict) -> Optional[List[float]]:
    """The Dice of an empty map on this case, None when the row cannot say."""
    if row["class"] == "no_tumour":
        return [1.0] * len(REGIONS)
    truth = row.get("truth_ml")
    return None if truth is None else [0.0 if truth[r] > 0 else 1.0 for r in REGIONS]


def _closes(gate: Optional[float], row: dict) -> bool:
    return gate is not None and row["class_probabilities"]["no_tumour"] >= gate


def gate_row(rows: Sequence[dict], gate: Optional[float]) -> dict:
    """One candidate's figures over `rows` (each with class_probabilities): mean Dice per region over every
    case and over the tumour cases, the mean false volume (mL) on tumour-free cases, and how many tumour cases
    and tumour-free cases the gate clears. Dice None when a cleared case's truth regions are unknown."""
    dice, tumour = [], []
    for row in rows:
        scores = _cleared_dice(row) if _closes(gate, row) else _ungated_dice(row)
        dice.append(scores)
        if row["class"] != "no_tumour":
            tumour.append(scores)
    known = all(s is not None for s in dice)
    free = [row for row in rows if row["class"] == "no_tumour"]

    def means(scores: List[List[float]]) -> Optional[Dict[str, float]]:
        if not known or not scores:
            return None
        return {r: float(np.mean([s[k] for s in scores])) for k, r in enumerate(REGIONS)}

    return {
        "no_tumour_gate": gate,
        "dice": means(dice),
        "dice_tumour_cases": means(tumour),
        "false_positive_ml": (float(np.mean([0.0 if _closes(gate, row) else row["false_positive_ml"] for row in free]))
                              if free else None),
        "tumour_cases_cleared": sum(_closes(gate, row) for row in rows if row["class"] != "no_tumour"),
        "tumour_free_cases_cleared": sum(_closes(gate, row) for row in free),
    }


def gate_table(rows: Sequence[dict], gates: Sequence[Optional[float]]) -> List[dict]:
    """`gate_row` for each candidate; empty when the model has no class head (no row has probabilities)."""
    scored = [row for row in rows if row.get("class_probabilities")]
    if not scored or len(scored) != len(rows):
        return []
    return [gate_row(scored, gate) for gate in gates]
