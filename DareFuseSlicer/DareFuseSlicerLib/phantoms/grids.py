"""The scanner grids the data engine writes cases on (size, spacing, orientation), by name.

Kept apart from acquisition.py, which needs SciPy, so that the command line can list them (`darefuse phantoms
--grid`) without importing the engine.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ..errors import InputError


@dataclass(frozen=True)
class Grid:
    size: tuple            # (x, y, z) voxels, as SimpleITK
    spacing: tuple         # mm
    direction: tuple = (1, 0, 0, 0, 1, 0, 0, 0, 1)  # LPS direction cosines, row-major
    origin: tuple = None   # LPS mm; None: the grid is centred on (0, 0, 0)
    note: str = ""

    def reference(self) -> sitk.Image:
        ref = sitk.Image([int(s) for s in self.size], sitk.sitkUInt8)
        ref.SetSpacing([float(s) for s in self.spacing])
        ref.SetDirection([float(d) for d in self.direction])
        if self.origin is None:
            half = np.array(self.direction, float).reshape(3, 3) @ ((np.array(self.size) - 1) * np.array(self.spacing) / 2)
            ref.SetOrigin(tuple(-half))
        else:
            ref.SetOrigin([float(o) for o in self.origin])
        return ref


GRIDS = {
    # BraTS 2023: 240x240x155 at 1 mm, stored as BraTS files are (NIfTI affine diag(-1,-1,1), origin
    # (0, 239, 0) RAS), i.e. identity direction in ITK's LPS.
    "brats": Grid((240, 240, 155), (1.0, 1.0, 1.0), origin=(0.0, -239.0, 0.0), note="BraTS 2023 grid"),
    # 3D T1-like acquisition with in-plane 0.94 mm, stored RAS+ (NIfTI canonical, direction diag(-1,-1,1)).
    "iso_ras": Grid((176, 240, 256), (1.0, 0.9375, 0.9375), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1),
                    note="1 mm sagittal-slab matrix, RAS-stored"),
    # 2D multi-slice, 3 mm slices.
    "ax_3mm": Grid((192, 192, 56), (1.25, 1.25, 3.0), note="axial 3 mm slices"),
    # Clinical thick-slice axial: 5 mm slices, top-down slice order (a rotation about x by 180 degrees).
    "ax_thick": Grid((256, 256, 34), (0.9375, 0.9375, 5.0), direction=(1, 0, 0, 0, -1, 0, 0, 0, -1),
                     note="axial 5 mm slices, top-down"),
    # Thick-slice axial 2-D protocol of an older site (site.SITES "lowfield"): 7 mm slices, 0.8 mm pixels.
    "ax_7mm": Grid((288, 288, 24), (0.8, 0.8, 7.0), note="axial 7 mm slices (a simulated site)"),
    # Small 2 mm grid for tests and quick looks.
    "test_2mm": Grid((96, 112, 88), (2.0, 2.0, 2.0), note="2 mm, for tests"),
}


def grid_by_name(name: str) -> Grid:
    if name not in GRIDS:
        raise InputError(f"grid: unknown grid {name!r}; choose one of {', '.join(GRIDS)}")
    return GRIDS[name]
