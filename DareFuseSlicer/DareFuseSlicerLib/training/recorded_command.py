"""The command line a run's card records: the options that differ from their defaults, as flags."""
from __future__ import annotations

from typing import Iterable, List


def differing_flags(options, defaults, names: Iterable[str]) -> List[str]:
    """`--name value` for each of `names` whose value is set and differs from `defaults`' (tuples spread out;
    a switch, a bool whose default is False, as the bare `--name`)."""
    parts: List[str] = []
    for name in names:
        value = getattr(options, name)
        if value is not None and value != getattr(defaults, name):
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                parts += [flag]
            else:
                parts += [flag] + ([str(v) for v in value] if isinstance(value, tuple) else [str(value)])
    return parts
