"""The data engine: synthetic four-contrast brain-tumour MRI on real MNI152 anatomy, with ground truth.

    from DareFuseSlicerLib.phantoms import make_case, write_case, generate, GRIDS
"""
from __future__ import annotations

from .acquisition import GRIDS
from .engine import Case, make_case
from .io import GRID_MIX, MANIFEST_COLUMNS, file_names, generate, read_manifest, sample_case_paths, write_case

__all__ = ["GRIDS", "GRID_MIX", "MANIFEST_COLUMNS", "Case", "make_case", "write_case", "generate", "file_names",
           "read_manifest", "sample_case_paths"]
