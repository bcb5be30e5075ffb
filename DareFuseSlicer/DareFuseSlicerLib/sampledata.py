"""The bundled sample case: its files, checked against sample_data.json (file name -> SHA256).

Standard library only (and the project's constants): Slicer registers the sample in its Sample Data module at
every start-up from here, which must not import the data engine (SciPy, nilearn) or anything heavy.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, List

from .constants import BRATS_SUFFIX, CONTRASTS
from .errors import InputError

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "Resources" / "SampleData"
SAMPLE_PREFIX = "DareFuseSample-glioma"
INDEX_NAME = "sample_data.json"


def file_names(case_id: str) -> dict:
    """Manifest key -> file name: <id>-t1n.nii.gz ... <id>-seg.nii.gz, <id>-t1n-tumourfree.nii.gz ..."""
    names = {}
    for contrast in CONTRASTS:
        suffix = BRATS_SUFFIX[contrast]
        names[suffix] = f"{case_id}-{suffix}.nii.gz"
        names[f"{suffix}_free"] = f"{case_id}-{suffix}-tumourfree.nii.gz"
    names["seg"] = f"{case_id}-seg.nii.gz"
    names["brainmask"] = f"{case_id}-brainmask.nii.gz"  # clinical cases only
    return names


def sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _recorded(folder: Path) -> Dict[str, str]:
    index = folder / INDEX_NAME
    if not index.is_file():
        raise InputError(f"sample data: {index} is missing; reinstall the extension or run docs/make_sample_case.py")
    return json.loads(index.read_text())  # {file name: sha256}


def sample_case_paths(verify: bool = True, directory=None) -> dict:
    """The bundled sample glioma: manifest key (t1n, ..., seg, ...) -> path, checked against sample_data.json."""
    folder = Path(directory) if directory else SAMPLE_DIR
    recorded = _recorded(folder)
    paths = {}
    required = [BRATS_SUFFIX[c] for c in CONTRASTS] + ["seg"]
    for key, name in file_names(SAMPLE_PREFIX).items():
        if name not in recorded:
            if key in required:
                raise InputError(f"sample data: {INDEX_NAME} does not list {name}")
            continue
        path = folder / name
        if not path.is_file():
            raise InputError(f"sample data: {path} is missing")
        if verify and sha256(path) != recorded[name]:
            raise InputError(f"sample data: {path} does not match its SHA256 in {INDEX_NAME}; the file is damaged")
        paths[key] = path
    return paths


def sample_data_source(directory=None) -> Dict[str, List[str]]:
    """The four images as Slicer's SampleDataLogic.registerCustomSampleDataSource takes them (uris, fileNames,
    nodeNames, checksums), from sample_data.json alone: no file is read or hashed here (Sample Data checks each
    SHA256 when it loads the file)."""
    folder = Path(directory) if directory else SAMPLE_DIR
    recorded = _recorded(folder)
    names = [file_names(SAMPLE_PREFIX)[BRATS_SUFFIX[contrast]] for contrast in CONTRASTS]
    missing = [name for name in names if name not in recorded]
    if missing:
        raise InputError(f"sample data: {INDEX_NAME} does not list {', '.join(missing)}")
    return {
        "uris": [(folder / name).as_uri() for name in names],
        "fileNames": names,
        "nodeNames": [name[: -len(".nii.gz")] for name in names],
        "checksums": [f"SHA256:{recorded[name]}" for name in names],
    }
