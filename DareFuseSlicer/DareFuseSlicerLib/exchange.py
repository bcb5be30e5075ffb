"""Values sent between the scene process and the inference process as files in a folder.

save(value, folder) writes any value made of JSON types, SimpleITK images and transforms, numpy arrays and
dataclasses (nested in dicts, lists and tuples at any depth) as `value.json` plus one file per image, transform
or array; load(folder) reads it back. It knows no field by name: a new field of the pipeline's result, an image
or a dict of images, comes through without a change here.

Images are written as uncompressed MetaImage (.mha): its header keeps origin, spacing and direction in full
double precision, so the scene gets exactly the geometry the pipeline computed (NIfTI stores them as float32
and moves an oblique grid by ~1e-7), and it is the fastest format SimpleITK writes and reads (a 240x240x155
float32 volume: 0.03 s to write, 0.06 s to read here).

A dataclass comes back as its own class when its module is already imported in the reading process (nothing is
imported to read a value: the pipeline's PipelineResult lives in a module that imports torch), else as a
Record with the same attributes.
"""
from __future__ import annotations

import dataclasses
import json
import re
import sys
import types
from pathlib import Path
from typing import Any, Dict, Mapping, Union

import numpy as np
import SimpleITK as sitk

PathLike = Union[str, Path]
VALUE_FILE = "value.json"


class Record(types.SimpleNamespace):
    """A dataclass read back where its class is not imported: its fields as attributes (record_type(record)
    says whose: "module:QualName")."""


_TYPE_KEY = "_record_type"


def record_type(record: Record) -> str:
    return vars(record).get(_TYPE_KEY, "")


def record_fields(record: Record) -> Dict[str, Any]:
    return {name: value for name, value in vars(record).items() if name != _TYPE_KEY}


def write_images(images: Mapping[str, sitk.Image], folder: PathLike) -> Dict[str, str]:
    """Each image as <name>.mha in `folder`; returns name -> file name (relative to the folder)."""
    folder = Path(folder)
    files = {}
    for name, image in images.items():
        files[name] = f"{_safe(name)}.mha"
        sitk.WriteImage(image, str(folder / files[name]), False)
    return files


def read_images(files: Mapping[str, str], folder: PathLike) -> Dict[str, sitk.Image]:
    return {name: sitk.ReadImage(str(Path(folder) / file)) for name, file in files.items()}


def save(value: Any, folder: PathLike) -> Path:
    """Write `value` into `folder` (created if needed); returns the path of its JSON part."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    encoded = _Writer(folder).encode(value, "value")
    path = folder / VALUE_FILE
    path.write_text(json.dumps(encoded), encoding="utf-8")
    return path


def load(folder: PathLike) -> Any:
    folder = Path(folder)
    return _decode(json.loads((folder / VALUE_FILE).read_text(encoding="utf-8")), folder)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:60] or "x"


class _Writer:
    def __init__(self, folder: Path):
        self.folder = folder
        self.count = 0

    def _file(self, where: str, extension: str) -> str:
        self.count += 1
        return f"{self.count:03d}-{_safe(where)}{extension}"

    def encode(self, value: Any, where: str) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, (int, float)):
            return value
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, sitk.Image):
            name = self._file(where, ".mha")
            sitk.WriteImage(value, str(self.folder / name), False)
            return {"__image__": name}
        if isinstance(value, sitk.Transform):
            name = self._file(where, ".tfm")
            sitk.WriteTransform(value, str(self.folder / name))
            return {"__transform__": name}
        if isinstance(value, np.ndarray):
            name = self._file(where, ".npy")
            np.save(self.folder / name, value, allow_pickle=False)
            return {"__array__": name}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            kind = type(value)
            return {"__dataclass__": f"{kind.__module__}:{kind.__qualname__}",
                    "fields": {f.name: self.encode(getattr(value, f.name), f"{where}.{f.name}")
                               for f in dataclasses.fields(value)}}
        if isinstance(value, Record):
            return {"__dataclass__": record_type(value),
                    "fields": {k: self.encode(v, f"{where}.{k}") for k, v in record_fields(value).items()}}
        if isinstance(value, Mapping):
            if all(isinstance(key, str) and not key.startswith("__") for key in value):
                return {key: self.encode(item, f"{where}.{key}") for key, item in value.items()}
            return {"__items__": [[self.encode(key, where), self.encode(item, f"{where}.{key}")]
                                  for key, item in value.items()]}
        if isinstance(value, tuple):
            return {"__tuple__": [self.encode(item, f"{where}.{i}") for i, item in enumerate(value)]}
        if isinstance(value, list):
            return [self.encode(item, f"{where}.{i}") for i, item in enumerate(value)]
        if isinstance(value, Path):
            return {"__path__": str(value)}
        raise TypeError(f"{where}: a {type(value).__name__} cannot be passed between processes; use JSON types, "
                        "SimpleITK images or transforms, numpy arrays or dataclasses of them.")


def _decode(value: Any, folder: Path) -> Any:
    if isinstance(value, list):
        return [_decode(item, folder) for item in value]
    if not isinstance(value, dict):
        return value
    if "__image__" in value:
        return sitk.ReadImage(str(folder / value["__image__"]))
    if "__transform__" in value:
        return sitk.ReadTransform(str(folder / value["__transform__"]))
    if "__array__" in value:
        return np.load(folder / value["__array__"], allow_pickle=False)
    if "__tuple__" in value:
        return tuple(_decode(item, folder) for item in value["__tuple__"])
    if "__path__" in value:
        return Path(value["__path__"])
    if "__items__" in value:
        return {_hashable(_decode(key, folder)): _decode(item, folder) for key, item in value["__items__"]}
    if "__dataclass__" in value:
        fields = {name: _decode(item, folder) for name, item in value["fields"].items()}
        return _rebuild(value["__dataclass__"], fields)
    return {key: _decode(item, folder) for key, item in value.items()}


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def _rebuild(type_name: str, fields: Dict[str, Any]) -> Any:
    module_name, _, qualname = type_name.partition(":")
    kind: Any = sys.modules.get(module_name)  # never imported here: see the module docstring
    for part in qualname.split(".") if kind is not None else ():
        kind = getattr(kind, part, None)
    if isinstance(kind, type) and dataclasses.is_dataclass(kind):
        init = {f.name for f in dataclasses.fields(kind) if f.init}
        if init <= set(fields):
            made = kind(**{name: fields[name] for name in init})
            for name in set(fields) - init:
                setattr(made, name, fields[name])
            return made
    return Record(**fields, **{_TYPE_KEY: type_name})
