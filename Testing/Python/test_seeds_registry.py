"""SEEDS.md, the registry of phantom case seeds: the bundled models' training and validation seeds are in it and
never on a held-out row, and the tests' seed blocks are registered as tests."""
import re
from functools import lru_cache
from pathlib import Path

import pytest

from DareFuseSlicerLib.network.store import read_card
from DareFuseSlicerLib.training.frontend_eval import card_seeds

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "DareFuseSlicer" / "Resources" / "Models"
ROW = re.compile(r"^\| (\d+)(?:-(\d+))? \| ([^|]+) \|")


@lru_cache(maxsize=1)
def _rows() -> tuple:
    """(first, last, role) of each row of the case-seed table (the first table of SEEDS.md), read once."""
    rows, inside = [], False
    for line in (ROOT / "SEEDS.md").read_text().splitlines():
        if line.startswith("| seeds | role |"):
            inside = True
        elif inside and not line.startswith("|"):
            break
        elif inside and ROW.match(line):
            first, last, role = ROW.match(line).groups()
            rows.append((int(first), int(last or first), role.strip()))
    return tuple(rows)


def _roles(seed: int) -> list:
    return [role for first, last, role in _rows() if first <= seed <= last]


def test_registry_table_reads():
    rows = _rows()
    assert len(rows) > 20
    assert all(first <= last for first, last, _ in rows)


@pytest.mark.parametrize("card", ["darefuse", "darefuse-raw", "brainmask"])
def test_card_seeds_are_registered_and_never_held_out(card):
    seeds = card_seeds(read_card(MODELS / f"{card}.safetensors"))
    assert seeds["training"], card
    for role, values in seeds.items():
        for seed in sorted(values):
            roles = _roles(seed)
            assert roles, f"{card}: {role} seed {seed} is not in SEEDS.md"
            assert not any(r.startswith("held-out") for r in roles), f"{card}: {role} seed {seed} is held out: {roles}"
            if role == "training":
                assert any(r.startswith("training") for r in roles), f"{card}: training seed {seed}: {roles}"


def test_test_seed_blocks_are_registered_as_tests():
    named = 0
    for path in sorted((ROOT / "Testing" / "Python").glob("test_*.py")):
        for seed in re.findall(r"^SEED = (\d+)  # SEEDS\.md", path.read_text(), re.M):
            named += 1
            assert any(r.startswith("tests") for r in _roles(int(seed))), f"{path.name}: SEED {seed}"
    assert named >= 2
