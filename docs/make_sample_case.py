"""Regenerate the bundled sample case exactly: DareFuseSlicer/Resources/SampleData/.

    .venv/bin/python docs/make_sample_case.py [--check]

One high-grade glioma on the BraTS grid (seed below), written with BraTS 2023 names under the prefix
DareFuseSample-glioma (four contrasts + label; the tumour-free twins are left out to stay under 10 MB),
and sample_data.json {file name: SHA256}. Files are int16 .nii.gz, byte-identical for the same seed.
--check regenerates into a temporary folder and compares the SHA256 with the recorded ones.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DareFuseSlicer"))

from DareFuseSlicerLib.phantoms import make_case, write_case  # noqa: E402
from DareFuseSlicerLib.phantoms.io import SAMPLE_DIR, SAMPLE_PREFIX, sha256  # noqa: E402

SEED = 5          # a high-grade glioma (necrosis, enhancing rim, wide oedema) that fits in 10 MB
SIZE_LIMIT = 10 * 1024 * 1024


def write_sample(folder: Path) -> dict:
    case = make_case(SEED, "glioma", "brats")
    if case.meta["subtype"] != "high_grade":
        raise SystemExit(f"seed {SEED} no longer gives a high-grade glioma ({case.meta['subtype']}); pick another")
    case.case_id = SAMPLE_PREFIX
    paths = write_case(case, folder, tumour_free=False)
    record = {Path(p).name: sha256(p) for p in sorted(paths.values())}
    (folder / "sample_data.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    total = sum(Path(p).stat().st_size for p in paths.values())
    print(f"seed {SEED}: {len(paths)} files, {total / 1e6:.2f} MB, volumes {case.meta['volumes_ml']}")
    if total >= SIZE_LIMIT:
        raise SystemExit(f"sample case is {total} bytes, over the 10 MB limit")
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="regenerate in a temporary folder and compare")
    args = parser.parse_args(argv)
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = write_sample(Path(tmp))
        recorded = json.loads((SAMPLE_DIR / "sample_data.json").read_text())
        same = fresh == recorded
        print("identical to the bundled sample" if same else "DIFFERS from the bundled sample")
        return 0 if same else 1
    SAMPLE_DIR.mkdir(parents=True, exist_ok=True)
    write_sample(SAMPLE_DIR)
    print(f"wrote {SAMPLE_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
