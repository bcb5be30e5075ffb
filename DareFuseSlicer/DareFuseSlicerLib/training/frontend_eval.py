"""What `darefuse evaluate` adds for whole-head (clinical) cases and for honest held-out sets.

- The front end against the engine's truth: registration error in mm per contrast (mean displacement of the
  brain's points between the recovered transform and the manifest's motion), brain-mask Dice against the
  engine's mask, and tumour voxels left outside the mask (meningiomas sit at the brain's surface).
- Refusals: held-out seeds that a model's card lists among its training or validation seeds, and a tuning
  folder that is, or shares cases with, the held-out folder.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set

import numpy as np
import SimpleITK as sitk

from ..constants import BRATS_SUFFIX
from ..errors import OptionError
from ..metrics import mask_dice
from ..pipeline import brainmask, register

#: The tumour margins (mm) at which `darefuse evaluate` scores the mask given out, beside the card's
#: (`mask_settings.tumour_margin_mm`, chosen on development cases from these).
TUMOUR_MARGINS_MM = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0)
#: The share thresholds at which it scores the mask given out (at the card's tumour margin), beside the card's
#: (`mask_settings.given_threshold`, chosen on development cases from these).
GIVEN_THRESHOLDS = (0.7, 0.75, 0.8, 0.85, 0.9)


def seed_field(seeds: Iterable[int]) -> list:
    """Seeds as a card records them (`_seed_set` reads them back): [first, last] for one unbroken range (as
    cards always had them), else [[first, last], ...], one pair per unbroken run."""
    runs: List[List[int]] = []
    for seed in sorted(set(int(s) for s in seeds)):
        if runs and seed == runs[-1][1] + 1:
            runs[-1][1] = seed
        else:
            runs.append([seed, seed])
    return runs[0] if len(runs) == 1 else runs


def _seed_set(value) -> Set[int]:
    """A card's seeds (seed_field's forms): [first, last], a list of such pairs, or a longer list of seeds."""
    if not value:
        return set()
    if all(isinstance(v, (list, tuple)) for v in value):
        return set().union(*(_seed_set(v) for v in value))
    values = [int(v) for v in value]
    if len(values) == 2 and values[1] >= values[0]:
        return set(range(values[0], values[1] + 1))
    return set(values)


def card_seeds(card: dict) -> Dict[str, Set[int]]:
    """Training and validation seeds a model's card records: data_recipe (seeds or train_seeds,
    validation_seeds, and its clinical set's), those of the model it was fine-tuned from (initialised_from:
    training_seeds, validation_seeds) and those of a twin-free prior's generator (prior.trained_on)."""
    recipe = card.get("data_recipe")
    recipe = recipe if isinstance(recipe, dict) else {}
    clinical = recipe.get("clinical") or {}
    parent = card.get("initialised_from") or {}
    # A twin-free prior's generator (training/prior.py) lists its own training seeds, one by one.
    prior_seeds = {int(s) for s in ((card.get("prior") or {}).get("trained_on") or {}).get("training_seeds", [])}
    return {
        "training": (_seed_set(recipe.get("seeds") or recipe.get("train_seeds")) | _seed_set(clinical.get("seeds"))
                     | _seed_set(parent.get("training_seeds")) | prior_seeds),
        "validation": (_seed_set(recipe.get("validation_seeds")) | _seed_set(clinical.get("validation_seeds"))
                       | _seed_set(parent.get("validation_seeds"))),
    }


def check_held_out(rows: Sequence[dict], cards: Dict[str, dict]) -> None:
    """OptionError when a held-out case's seed is among a model's training or validation seeds."""
    held_out = {int(row["seed"]) for row in rows}
    for name, card in cards.items():
        for role, seeds in card_seeds(card).items():
            shared = sorted(held_out & seeds)
            if shared:
                raise OptionError(f"{{data}} is not held out for model {name}: {len(shared)} of its seeds "
                                  f"({_seed_text(shared)}) are among the model's {role} seeds in its card.", "data")


def check_tuning_folder(data: Path, tune: Optional[Path], rows: Sequence[dict], tune_rows: Sequence[dict]) -> None:
    """OptionError when the tuning folder is the held-out folder or shares seeds with it: thresholds chosen
    on the held-out cases would make its figures a development result."""
    if tune is None:
        return
    if Path(tune).resolve() == Path(data).resolve():
        raise OptionError("{tune} points at the held-out folder {data}: tune on validation cases instead.",
                          "tune", "data")
    shared = sorted({int(r["seed"]) for r in rows} & {int(r["seed"]) for r in tune_rows})
    if shared:
        raise OptionError(f"{{tune}} shares {len(shared)} case seeds ({_seed_text(shared)}) with the held-out "
                          "folder {data}: tune on validation cases instead.", "tune", "data")


def _seed_text(seeds: List[int]) -> str:
    return ", ".join(str(s) for s in seeds[:5]) + (", ..." if len(seeds) > 5 else "")


def true_transform(row: dict, contrast: str) -> sitk.AffineTransform:
    """The engine's motion as a reference -> contrast map (the inverse of the manifest's to_ref)."""
    from ..phantoms.io import to_reference

    full = np.vstack([to_reference(row, BRATS_SUFFIX[contrast]), [0.0, 0.0, 0.0, 1.0]])
    inverse = np.linalg.inv(full)
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(inverse[:3, :3].ravel().tolist())
    transform.SetTranslation(inverse[:3, 3].tolist())
    return transform


def registration_error(row: dict, contrast: str, transform: sitk.Transform, points: np.ndarray) -> float:
    """A registration's error in mm: the mean distance between where it and the engine's motion take the
    engine's brain (`points`: register.mask_points of the engine's brain mask)."""
    return register.mean_displacement_mm(transform, true_transform(row, contrast), points)


def truth_on(image: sitk.Image, truth_ref: sitk.Image, row: dict, contrast: str) -> np.ndarray:
    """An engine truth on the reference grid (brain mask or label) brought onto this contrast's grid through the
    known motion (nearest neighbour), as an array (Z, Y, X): how a mask made on that contrast is scored."""
    to_ref = true_transform(row, contrast).GetInverse()  # contrast point -> reference point
    moved = sitk.Resample(truth_ref, image, to_ref, sitk.sitkNearestNeighbor, 0, truth_ref.GetPixelID())
    return sitk.GetArrayFromImage(moved)


def case_scores(folder: Path, row: dict, front, truth: np.ndarray, label: np.ndarray) -> Optional[dict]:
    """The front end's scores on one clinical case (None for a BraTS-style case, where it does nothing): the
    mask given out holds the model's segmented tumour (`label`, on the reference grid) grown by the card's
    tumour margin, and is scored at every margin of TUMOUR_MARGINS_MM beside it."""
    if front is None or front.brain_mask is None or row.get("acquisition") != "clinical":
        return None
    engine_image = sitk.ReadImage(str(Path(folder) / row["brainmask"]))
    engine_mask = sitk.GetArrayViewFromImage(engine_image)
    points = register.mask_points(engine_image, step=4)
    errors = {name: round(registration_error(row, name, result.transform, points), 4)
              for name, result in front.registrations.items()}
    margins = sorted({float(front.tumour_margin_mm), *TUMOUR_MARGINS_MM})
    given = brainmask.with_tumour_margins(front.brain_mask, label, front.region, margins)
    scores = {m: _mask_scores(sitk.GetArrayViewFromImage(given[m]) > 0, engine_mask, truth) for m in margins}
    return {
        "registration_error_mm": errors,
        "left_out": sorted(n for n, r in front.registrations.items() if not r.accepted),
        **scores[float(front.tumour_margin_mm)],
        "tumour_margin_mm": float(front.tumour_margin_mm),
        "by_tumour_margin": {f"{m:g}": scores[m] for m in margins},
        **_threshold_scores(front, label, engine_mask, truth, scores[float(front.tumour_margin_mm)]),
        "tumour_class": row["tumour_class"],
    }


def _threshold_scores(front, label: np.ndarray, engine_mask: np.ndarray, truth: np.ndarray, card_scores: dict) -> dict:
    """The mask given out remade from its share at every threshold of GIVEN_THRESHOLDS, with the segmented
    tumour at the card's tumour margin, beside the card's threshold (`card_scores`: the mask the front end gave
    out, already scored); empty when the front end kept no share."""
    if front.share is None or front.mask_settings is None:
        return {}
    settings = front.mask_settings
    card = settings.given_out().threshold
    scores = {}
    for threshold in sorted({card, *GIVEN_THRESHOLDS}):
        if threshold == card:
            scores[f"{threshold:g}"] = card_scores
            continue
        mask = brainmask.refine(front.share[1], front.share[0], front.brain_mask, settings.given_out(threshold))
        given = brainmask.with_tumour(mask, label, front.region, front.tumour_margin_mm)
        scores[f"{threshold:g}"] = _mask_scores(sitk.GetArrayViewFromImage(given) > 0, engine_mask, truth)
    return {"given_threshold": card, "by_given_threshold": scores}


def _mask_scores(mask: np.ndarray, engine_mask: np.ndarray, truth: np.ndarray) -> dict:
    # 7 decimals: with 5, a development set's mean fell 1.25e-6 below a rule's 0.97, within its own rounding.
    return {"brain_mask_dice": round(mask_dice(mask, engine_mask), 7),
            "tumour_voxels_outside_mask": int(np.count_nonzero((truth > 0) & ~mask))}


def summary(per_case: Iterable[Optional[dict]]) -> Optional[dict]:
    """Median and worst registration error, brain-mask Dice, tumour voxels outside the mask (clinical cases),
    and the last two at every tumour margin (`by_tumour_margin`) and given-out threshold scored."""
    cases = [c for c in per_case if c is not None]
    if not cases:
        return None
    errors = [e for c in cases for e in c["registration_error_mm"].values()]
    return {
        "cases": len(cases),
        "registration_error_mm": {"median": float(np.median(errors)) if errors else None,
                                  "worst": float(np.max(errors)) if errors else None, "registrations": len(errors)},
        "contrasts_left_out": sum(len(c["left_out"]) for c in cases),
        **_mask_summary(cases),
        "tumour_margin_mm": cases[0]["tumour_margin_mm"],
        "by_tumour_margin": _variant_summary(cases, "by_tumour_margin", "tumour_margin_mm"),
        **({"given_threshold": cases[0]["given_threshold"],
            "by_given_threshold": _variant_summary(cases, "by_given_threshold", "given_threshold")}
           if all("by_given_threshold" in c for c in cases) else {}),
    }


def _variant_summary(cases: List[dict], listed: str, key: str) -> List[dict]:
    """`_mask_summary` at each value scored (each case's `listed`: value -> its scores), as rows keyed `key`."""
    return [{key: float(value), **_mask_summary([{"tumour_class": c["tumour_class"], **c[listed][value]}
                                                 for c in cases])}
            for value in cases[0][listed]]


def _mask_summary(cases: List[dict]) -> dict:
    dice = [c["brain_mask_dice"] for c in cases]
    return {
        "brain_mask_dice": {"mean": float(np.mean(dice)), "worst": float(np.min(dice))},
        "tumour_voxels_outside_mask": sum(c["tumour_voxels_outside_mask"] for c in cases),
        "meningioma_voxels_outside_mask": sum(c["tumour_voxels_outside_mask"] for c in cases
                                              if c["tumour_class"] == "meningioma"),
    }
