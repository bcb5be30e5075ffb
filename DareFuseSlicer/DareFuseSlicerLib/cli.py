"""`darefuse`: the command line. Each part registers its own subcommands; heavy imports happen in handlers."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from . import __version__
from .errors import Cancelled, DareFuseError


def build_parser() -> argparse.ArgumentParser:
    from .phantoms import command as phantoms_command
    from .pipeline import command as pipeline_command
    from .training import command as training_command

    parser = argparse.ArgumentParser(
        prog="darefuse",
        description="DARE-FUSE brain-tumour MRI: segmentation, uncertainty, lesion-removal prior, Grad-CAM++.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (pipeline_command, phantoms_command, training_command):
        module.register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from .matplotlib_setup import use_temporary_matplotlib_config

    use_temporary_matplotlib_config()  # nothing written in the user's home folder
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except Cancelled as error:
        print(f"darefuse: {error}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("darefuse: interrupted; nothing was written.", file=sys.stderr)
        return 130
    except DareFuseError as error:
        print(f"darefuse: error: {error}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
