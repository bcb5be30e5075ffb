"""Python packages in Slicer: which requirements are missing, and pip constraints that keep Slicer's own packages.

Used by the module panel before it installs anything (after asking); no Slicer or torch import here.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional

#: Packages Slicer provides itself, which an install must never replace (pinned to the installed version).
PROTECTED_PACKAGES = ("SimpleITK", "numpy", "scipy", "vtk", "torch", "torchvision")


def _distribution_version(name: str) -> Optional[str]:
    import importlib.metadata as metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def read_requirements(path) -> List[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def missing_requirements(path) -> List[str]:
    """The requirement lines of `path` that the running Python does not satisfy (absent or too old)."""
    missing = []
    for requirement in read_requirements(path):
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
        installed = _distribution_version(name)
        if installed is None or not _satisfies(installed, requirement[len(name):]):
            missing.append(requirement)
    return missing


def _satisfies(version: str, specifier: str) -> bool:
    specifier = specifier.split(";", 1)[0].strip()
    if not specifier:
        return True
    try:
        from packaging.specifiers import SpecifierSet
        from packaging.version import Version
    except ImportError:  # pip's vendored copy is always there where pip is
        from pip._vendor.packaging.specifiers import SpecifierSet
        from pip._vendor.packaging.version import Version
    return Version(version) in SpecifierSet(specifier)


def protected_constraints() -> List[str]:
    """pip constraint lines pinning Slicer's own packages at their installed versions."""
    pins = []
    for name in PROTECTED_PACKAGES:
        version = _distribution_version(name)
        if version is not None:
            pins.append(f"{name}=={version}")
    return pins
