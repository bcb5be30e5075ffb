"""Clinical data sets on disk: `darefuse phantoms --acquisition`, mixed sets, the manifest's new columns,
old manifests, and one-line errors for bad options.

Run: .venv/bin/python -m pytest Testing/Python/test_phantoms_clinical_files.py -q
"""
from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from DareFuseSlicerLib.errors import InputError
from DareFuseSlicerLib.phantoms import CLINICAL_SHARE, MANIFEST_COLUMNS, generate, make_case, read_manifest, to_reference
from DareFuseSlicerLib.cli.phantoms import register
from DareFuseSlicerLib.phantoms.io import case_acquisition
from DareFuseSlicerLib.training.dataset import read_rows

ROOT = Path(__file__).resolve().parents[2]
OLD_COLUMNS = ("case_id", "tumour_class", "seed", "grid", "size", "spacing", "lesion_count", "netc_ml", "snfh_ml",
               "et_ml", "t1n", "t1c", "t2w", "t2f", "seg", "t1n_free", "t1c_free", "t2w_free", "t2f_free", "subtype")


def parser():
    p = argparse.ArgumentParser(prog="darefuse")
    register(p.add_subparsers(dest="command"))
    return p


def test_acquisition_flag():
    p = parser()
    assert p.parse_args(["phantoms", "--out", "d", "--n", "1", "--seed", "1"]).acquisition == "brats"
    for mode in ("brats", "clinical", "mixed"):
        assert p.parse_args(["phantoms", "--out", "d", "--n", "1", "--seed", "1", "--acquisition", mode]).acquisition == mode
    with pytest.raises(SystemExit):
        p.parse_args(["phantoms", "--out", "d", "--n", "1", "--seed", "1", "--acquisition", "scanner"])


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT / "DareFuseSlicer"))
    return subprocess.run([sys.executable, "-m", "DareFuseSlicerLib.cli", "phantoms", *args], capture_output=True,
                          text=True, env=env, timeout=120)


def test_bad_options_give_one_line_errors(tmp_path):
    out = tmp_path / "never"
    result = run_cli("--out", str(out), "--n", "1", "--seed", "1", "--acquisition", "clinical", "--grid", "brats")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "darefuse: error: --grid: clinical cases draw each contrast's own grid; leave --grid out"]
    result = run_cli("--out", str(out), "--n", "1", "--seed", "1", "--acquisition", "raw")
    assert result.returncode == 2 and "--acquisition: invalid choice: 'raw'" in result.stderr.strip().splitlines()[-1]
    result = run_cli("--out", str(out), "--n", "1", "--seed", "1", "--acquisition", "clinical", "--randomise-brats")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("darefuse: error: --randomise-brats:")
    assert "Traceback" not in result.stderr and not out.exists()


def test_library_rejects_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="acquisition"):
        make_case(1, acquisition="raw")
    with pytest.raises(InputError, match="grid"):
        make_case(1, "glioma", "brats", acquisition="clinical")
    with pytest.raises(InputError, match="acquisition"):
        generate(tmp_path / "a", 1, seed=1, acquisition="raw")
    with pytest.raises(InputError, match="grids"):
        generate(tmp_path / "b", 1, seed=1, grids=["test_2mm"], acquisition="clinical")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_mixed_share_is_decided_by_each_seed():
    kinds = [case_acquisition(seed, "mixed") for seed in range(2000)]
    assert kinds == [case_acquisition(seed, "mixed") for seed in range(2000)]
    assert set(kinds) == {"brats", "clinical"}
    assert np.mean(np.array(kinds) == "clinical") == pytest.approx(CLINICAL_SHARE, abs=0.04)
    assert {case_acquisition(seed, "clinical") for seed in range(50)} == {"clinical"}


def test_old_manifests_still_load(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    with open(folder / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=OLD_COLUMNS)
        writer.writeheader()
        writer.writerow({column: "DareFuse-000001" if column == "case_id" else "x" for column in OLD_COLUMNS})
    for rows in (read_manifest(folder / "manifest.csv"), read_rows(folder)):
        assert set(rows[0]) == set(MANIFEST_COLUMNS)
        assert rows[0]["acquisition"] == "brats" and rows[0]["reference"] == "t1n" and rows[0]["brainmask"] == ""
        assert rows[0]["randomised"] == "0"
        np.testing.assert_array_equal(to_reference(rows[0], "t2w"), np.eye(3, 4))


def first_seeds_giving(pattern, start: int = 7000) -> int:
    seed = start
    while [case_acquisition(seed + i, "mixed") for i in range(len(pattern))] != list(pattern):
        seed += 1
    return seed


@pytest.mark.slow
def test_mixed_data_set_from_the_command_line(tmp_path):
    seed = first_seeds_giving(("clinical", "brats"))
    out = tmp_path / "mixed"
    p = parser()
    args = p.parse_args(["phantoms", "--out", str(out), "--n", "2", "--seed", str(seed), "--acquisition", "mixed",
                         "--grid", "test_2mm"])
    assert args.handler(args) == 0
    rows = read_manifest(out / "manifest.csv")
    assert tuple(rows[0]) == MANIFEST_COLUMNS
    clinical, brats = rows
    assert (clinical["acquisition"], brats["acquisition"]) == ("clinical", "brats")
    assert clinical["grid"] == "clinical" and brats["grid"] == "test_2mm" and brats["brainmask"] == ""
    assert (clinical["randomised"], brats["randomised"]) == ("1", "0")
    mask = sitk.ReadImage(str(out / clinical["brainmask"]))
    seg = sitk.ReadImage(str(out / clinical["seg"]))
    t1 = sitk.ReadImage(str(out / clinical["t1n"]))
    assert mask.GetSize() == seg.GetSize() == t1.GetSize() and clinical["t1n_size"] == "x".join(map(str, t1.GetSize()))
    for suffix in ("t1n", "t1c", "t2w", "t2f"):
        image = sitk.ReadImage(str(out / clinical[suffix]))
        assert clinical[f"{suffix}_size"] == "x".join(str(n) for n in image.GetSize())
        assert np.allclose([float(v) for v in clinical[f"{suffix}_spacing"].split("x")], image.GetSpacing(), rtol=1e-5)
        m = to_reference(clinical, suffix)
        np.testing.assert_allclose(m[:, :3] @ m[:, :3].T, np.eye(3), atol=1e-12)
        angle = np.degrees(np.arccos(np.clip((np.trace(m[:, :3]) - 1) / 2, -1, 1)))
        assert angle == pytest.approx(float(clinical[f"{suffix}_rot_deg"]), abs=1e-3)
        np.testing.assert_array_equal(to_reference(brats, suffix), np.eye(3, 4))
        assert brats[f"{suffix}_size"] == "96x112x88" and brats[f"{suffix}_rot_deg"] == "0.0000"
    np.testing.assert_array_equal(to_reference(clinical, "t1n"), np.eye(3, 4))
    assert len(list(out.iterdir())) == 1 + 10 + 9


@pytest.mark.slow
def test_clinical_case_as_a_dicom_study(tmp_path):
    """--format dicom writes a clinical case as a study: one series per contrast on its own grid, with the
    label and the brain mask as NIfTI beside it."""
    from DareFuseSlicerLib.dicom.series import load, read

    out = tmp_path / "dicom"
    p = parser()
    args = p.parse_args(["phantoms", "--out", str(out), "--n", "1", "--seed", "5003", "--acquisition", "clinical",
                         "--format", "dicom"])
    assert args.handler(args) == 0
    row = read_manifest(out / "manifest.csv")[0]
    assert row["acquisition"] == "clinical" and (out / row["brainmask"]).is_file() and (out / row["seg"]).is_file()
    sizes = set()
    for suffix, contrast in (("t1n", "t1"), ("t1c", "t1ce"), ("t2w", "t2"), ("t2f", "flair")):
        image = read(load(out / row[suffix], contrast))
        assert "x".join(str(n) for n in image.GetSize()) == row[f"{suffix}_size"]
        sizes.add(image.GetSize())
    assert len(sizes) == 4
