"""The data engine: synthetic four-contrast brain-tumour MRI on real MNI152 anatomy, with ground truth.

    from DareFuseSlicerLib.phantoms import make_case, write_case, generate, GRIDS

The names below load their modules on first use (PEP 562): the command line registers `darefuse phantoms`
(cli/phantoms.py) for every command, and `darefuse segment` must not import SciPy and the engine for it.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, List

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load lazily
    from .engine import Case, make_case
    from .grids import GRIDS
    from .io import (CLINICAL_SHARE, GRID_MIX, MANIFEST_COLUMNS, file_names, generate, read_manifest,
                     sample_case_paths, to_reference, write_case)

#: Public name -> the submodule defining it.
_SOURCES = {
    "GRIDS": "grids", "Case": "engine", "make_case": "engine", "GRID_MIX": "io", "MANIFEST_COLUMNS": "io",
    "file_names": "io", "generate": "io", "read_manifest": "io", "sample_case_paths": "io", "write_case": "io",
    "CLINICAL_SHARE": "io", "to_reference": "io",
}

__all__ = ["GRIDS", "GRID_MIX", "MANIFEST_COLUMNS", "CLINICAL_SHARE", "Case", "make_case", "write_case", "generate",
           "file_names", "read_manifest", "sample_case_paths", "to_reference"]


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_SOURCES[name]}", __name__), name)
    globals()[name] = value  # later look-ups find it directly
    return value


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
