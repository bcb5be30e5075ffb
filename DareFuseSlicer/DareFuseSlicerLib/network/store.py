"""The model store: weights as safetensors (never a pickle) beside a JSON model card.

`<stem>.safetensors` holds the tensors; `<stem>.card.json` holds the architecture and its settings, the
training command and seed, the data recipe, the measured metrics and the SHA256 of the weights file.
Loading checks the SHA256 before it reads a single tensor.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import InputError
from .model import DareFuseNet, NetConfig

CARD_FORMAT = "darefuse-model-card/1"
PathLike = Union[str, Path]


def card_path(weights_path: PathLike) -> Path:
    """model.safetensors -> model.card.json (same folder, same stem)."""
    weights_path = Path(weights_path)
    return weights_path.with_name(weights_path.stem + ".card.json")


def sha256_of(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _builders() -> Dict[str, Tuple[Callable[[dict], nn.Module], Callable[[nn.Module], dict]]]:
    """Architecture name -> (build from config dict, config dict of a model). The baseline lives in
    training/baseline.py; imported lazily so that inference needs nothing from training."""
    from ..training.baseline import BaselineConfig, SegResNetBaseline
    from .brainmask_net import BrainMaskConfig, BrainMaskNet

    return {
        "DareFuseNet": (lambda c: DareFuseNet(NetConfig.from_dict(c)), lambda m: m.config.to_dict()),
        "BrainMaskNet": (lambda c: BrainMaskNet(BrainMaskConfig.from_dict(c)), lambda m: m.config.to_dict()),
        "SegResNetBaseline": (lambda c: SegResNetBaseline(BaselineConfig.from_dict(c)), lambda m: m.config.to_dict()),
    }


def save_model(model: nn.Module, path: PathLike, card: dict) -> Path:
    """Write `path` (.safetensors) and its card; the card gets architecture, config and sha256 added.

    Returns the card's path. `card` should hold: training_command, seed, data_recipe, metrics.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(f"Model file {path} must end in .safetensors.")
    architecture = type(model).__name__
    builders = _builders()
    if architecture not in builders:
        raise InputError(f"Cannot store a {architecture}; known architectures: {sorted(builders)}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"format": "pt", "architecture": architecture})
    full_card = dict(card)
    full_card.update(
        {
            "format": CARD_FORMAT,
            "architecture": architecture,
            "config": builders[architecture][1](model),
            "weights_file": path.name,
            "weights_bytes": path.stat().st_size,
            "sha256": sha256_of(path),
        }
    )
    target = card_path(path)
    target.write_text(json.dumps(full_card, indent=2, sort_keys=False, default=str) + "\n")
    return target


def save_model_staged(model: nn.Module, target: PathLike, card: dict) -> Path:
    """save_model into a hidden staging folder beside `target`, then moved into place: an interrupted save
    leaves no model; weights first, card last, so until the card lands the model is refused, never half-read."""
    target = Path(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.stem}-partial-", dir=target.parent))
    try:
        save_model(model, staging / target.name, card)
        (staging / target.name).replace(target)
        card_path(staging / target.name).replace(card_path(target))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def read_card(path: PathLike) -> dict:
    path = Path(path)
    card_file = card_path(path)
    if not path.is_file():
        raise InputError(f"Model file {path} does not exist.")
    if not card_file.is_file():
        raise InputError(f"Model file {path} has no model card {card_file.name} beside it; refusing to load it.")
    try:
        card = json.loads(card_file.read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"Model card {card_file} is not readable JSON: {error}") from None
    for key in ("architecture", "config", "sha256"):
        if key not in card:
            raise InputError(f"Model card {card_file} lacks the field {key!r}.")
    return card


def record_metrics(path: PathLike, key: str, metrics: dict, postprocess: Optional[dict] = None,
                   review: Optional[dict] = None, mask_settings: Optional[dict] = None,
                   unshown: Optional[dict] = None) -> Path:
    """Add measured metrics (e.g. a held-out evaluation) to a model's card under metrics[key], and the
    post-processing thresholds, review-region, brain-mask or unshown-tumour settings those metrics were measured
    with (card["postprocess"], card["review"], card["mask_settings"], card["unshown"], which the pipeline then uses). The weights are untouched, so the card's SHA256 stays valid;
    it is checked first, so a card never describes weights other than its own."""
    path = Path(path)
    card = read_card(path)
    if sha256_of(path) != card["sha256"]:
        raise InputError(f"Model file {path} does not match its card's SHA256; not recording metrics for it.")
    card.setdefault("metrics", {})[key] = metrics
    if postprocess is not None:
        card["postprocess"] = postprocess
    if review is not None:
        card["review"] = review
    if mask_settings is not None:
        card["mask_settings"] = mask_settings
    if unshown is not None:
        card["unshown"] = unshown
    target = card_path(path)
    target.write_text(json.dumps(card, indent=2, default=str) + "\n")
    return target


def load_model(path: PathLike, device: str = "cpu") -> nn.Module:
    """Build the model its card describes and load the weights, after checking their SHA256.
    Returns the model in eval mode with its card as `model.card`."""
    path = Path(path)
    card = read_card(path)
    actual = sha256_of(path)
    if actual != card["sha256"]:
        raise InputError(
            f"Model file {path} does not match its card: SHA256 {actual} instead of {card['sha256']}. "
            "The file is corrupt or was replaced; reinstall the model."
        )
    builders = _builders()
    if card["architecture"] not in builders:
        raise InputError(f"Model card {card_path(path)} names an unknown architecture {card['architecture']!r}.")
    model = builders[card["architecture"]][0](card["config"])
    try:
        state = load_file(str(path), device="cpu")
        model.load_state_dict(state, strict=True)
    except (RuntimeError, OSError) as error:
        raise InputError(f"Model file {path} does not fit the architecture of its card: {error}") from None
    model.card = card
    return model.to(device).eval()
