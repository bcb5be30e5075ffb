"""`darefuse phantoms`: write a synthetic data set (wired into DareFuseSlicerLib.cli by register())."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ..constants import DATASET_FORMATS
from ..errors import InputError
from ..phantoms.grids import GRIDS  # not the engine (SciPy): the parser is built for every command
from ..phantoms.site import SITES as SITE_NAMES  # (site.py imports NumPy and tissues.py only)


def register(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "phantoms",
        help="write synthetic four-contrast brain-tumour cases with labels and tumour-free twins",
        description="Write N synthetic cases (BraTS 2023 names, classes balanced) and manifest.csv into DIR. "
                    "The same seed gives byte-identical files.",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (new or empty)")
    parser.add_argument("--n", required=True, type=int, metavar="N", help="number of cases (>= 1)")
    parser.add_argument("--seed", required=True, type=int, metavar="S", help="seed of the first case (>= 0)")
    parser.add_argument("--acquisition", choices=("brats", "clinical", "mixed"), default="brats",
                        help="brats: skull-stripped, co-registered, one grid (default); clinical: the whole "
                             "head, each contrast on its own grid with its own motion, noise in the air, "
                             "brain mask written; mixed: about half of each, decided by each case's seed")
    parser.add_argument("--grid", choices=sorted(GRIDS), default=None,
                        help="put every BraTS-style case on this grid (default: mostly the BraTS grid, some "
                             "other matrices and thick-slice scans); not with --acquisition clinical")
    parser.add_argument("--randomise-brats", action="store_true",
                        help="domain-randomise the tissue intensities of BraTS-style cases too (per tissue, "
                             "non-linear; clinical cases always are; default off: the same bytes as before)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="processes making cases at once (default 1); the files are the same for any N")
    parser.add_argument("--format", dest="file_format", choices=DATASET_FORMATS, default="nifti",
                        help="nifti (default): BraTS 2023 files; dicom: each case as a DICOM study (a localizer "
                             "and one MR series per contrast, SeriesDescription 'T1 MPRAGE', 'T1 MPRAGE post Gd', "
                             "'T2 TSE ax', 'FLAIR ax'; a synthetic patient) in DIR/<case id>/, its label as "
                             "<case id>-seg.nii.gz, no tumour-free twins")
    parser.add_argument("--site", choices=sorted(SITE_NAMES), default=None,
                        help="a simulated new site (phantoms/site.py): its own contrast, texture, noise and slice "
                             "thickness, outside the training cases' ranges; BraTS-style cases on its grid (unless "
                             "--grid), clinical ones with its stack thickness; no tumour-free twins; a `site` "
                             "manifest column. Split into labelled and unlabelled folders with `darefuse site-split`")
    parser.add_argument("--overwrite", action="store_true", help="empty a non-empty DIR first")
    parser.set_defaults(handler=run)  # cli.main calls args.handler(args)
    split = subparsers.add_parser(
        "site-split",
        help="a labelled and an unlabelled folder from a pool of site cases (for `darefuse adapt`)",
        description="From a pool made by `darefuse phantoms --site NAME`: OUT/labelled holds its first K cases "
                    "with their -seg files, OUT/unlabelled the others without -seg or brain mask and with the "
                    "manifest's ground-truth columns blank. Files are hard links (copies across file systems).",
    )
    split.add_argument("--pool", required=True, type=Path, metavar="DIR", help="folder of labelled site cases")
    split.add_argument("--labelled", required=True, type=int, metavar="K", help="cases kept labelled (0 to all)")
    split.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (new or empty)")
    split.set_defaults(handler=run_split)
    return parser


def run(args) -> int:
    """Returns the exit status; user errors raise InputError (the CLI prints them and exits 2)."""
    if args.n < 1:
        raise InputError(f"--n: the number of cases must be at least 1, got {args.n}")
    if args.seed < 0:
        raise InputError(f"--seed: must be >= 0, got {args.seed}")
    if args.workers < 1:
        raise InputError(f"--workers: must be at least 1, got {args.workers}")
    if args.grid and args.acquisition == "clinical":
        raise InputError("--grid: clinical cases draw each contrast's own grid; leave --grid out")
    if args.randomise_brats and args.acquisition == "clinical":
        raise InputError("--randomise-brats: there are no BraTS-style cases with --acquisition clinical")
    if args.site and args.randomise_brats:
        raise InputError("--randomise-brats: a site keeps its own intensities; leave it out with --site")
    if args.site and args.file_format != "nifti":
        raise InputError("--format: a site's cases are NIfTI files (what `darefuse adapt` reads); leave --format out")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not args.overwrite:
            raise InputError(f"--out: {out} is not empty; choose an empty folder or pass --overwrite")
        shutil.rmtree(out)
    from ..phantoms.io import generate

    manifest = generate(out, args.n, args.seed, progress=True, grids=[args.grid] if args.grid else None,
                        workers=args.workers, file_format=args.file_format, acquisition=args.acquisition,
                        randomise_brats=args.randomise_brats, site=args.site)
    print(f"wrote {args.n} cases and {manifest}")
    return 0


def run_split(args) -> int:
    from ..phantoms.site import split_site

    folders = split_site(args.pool, args.out, args.labelled)
    for role, folder in folders.items():
        print(f"{role}: {folder}")
    return 0
