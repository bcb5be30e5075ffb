"""Option checks shared by the training commands (train, adapt, train-prior): one wording for each refusal."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..errors import OptionError


def check_device(device: Optional[str]) -> None:
    """None (the default: cuda when available), cpu, or cuda where a CUDA device is present."""
    if device not in (None, "cpu", "cuda"):
        raise OptionError(f"{{device}} must be cpu or cuda, got {device!r}.", "device")
    if device == "cuda" and not torch.cuda.is_available():
        raise OptionError("{device} cuda: no CUDA device is available here; use {device} cpu.", "device")


def check_budget(minutes: Optional[float], steps: Optional[int]) -> None:
    """A budget given is a positive one."""
    if minutes is not None and minutes <= 0:
        raise OptionError(f"{{minutes}} must be positive, got {minutes}.", "minutes")
    if steps is not None and steps < 1:
        raise OptionError(f"{{steps}} must be at least 1, got {steps}.", "steps")


def check_run_folder(out, model_file: str) -> None:
    """A run never replaces a model already written there."""
    if (Path(out) / model_file).exists():
        raise OptionError(f"{{out}} {out} already holds {model_file}; choose another run folder.", "out")
