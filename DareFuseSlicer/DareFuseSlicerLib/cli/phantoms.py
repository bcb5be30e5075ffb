"""`darefuse phantoms`: write a synthetic data set (wired into DareFuseSlicerLib.cli by register())."""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from ..errors import InputError
from ..phantoms.grids import GRIDS  # not the engine (SciPy): the parser is built for every command


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
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="processes making cases at once (default 1); the files are the same for any N")
    parser.add_argument("--overwrite", action="store_true", help="empty a non-empty DIR first")
    parser.set_defaults(handler=run)  # cli.main calls args.handler(args)
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
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not args.overwrite:
            raise InputError(f"--out: {out} is not empty; choose an empty folder or pass --overwrite")
        shutil.rmtree(out)
    from ..phantoms.io import generate

    manifest = generate(out, args.n, args.seed, progress=True, grids=[args.grid] if args.grid else None,
                        workers=args.workers, acquisition=args.acquisition)
    print(f"wrote {args.n} cases and {manifest}")
    return 0
