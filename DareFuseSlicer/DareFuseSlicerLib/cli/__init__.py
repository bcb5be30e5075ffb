"""`darefuse`: the command line, at the top of the layers it drives (which never import it).

Each command module registers its subcommands; heavy imports happen in the handlers:
segment.py (segment, demo, batch), phantoms.py (phantoms, site-split), training.py (train, train-prior, adapt,
train-brainmask, evaluate).
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from typing import Iterator, List, Optional

from .. import __version__
from ..errors import Cancelled, DareFuseError, OptionError


def build_parser() -> argparse.ArgumentParser:
    from . import phantoms, segment, training

    parser = argparse.ArgumentParser(
        prog="darefuse",
        description="DARE-FUSE brain-tumour MRI: segmentation, uncertainty, lesion-removal prior, Grad-CAM++.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (segment, phantoms, training):
        module.register(subparsers)
    return parser


def flag(option: str) -> str:
    """The command-line flag of a library option: output_dir -> --output-dir."""
    return "--" + option.replace("_", "-")


def user_message(error: DareFuseError) -> str:
    """The error as the command line says it: library options named by their flags."""
    return error.naming(flag) if isinstance(error, OptionError) else str(error)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a process manager, `kill`, the end of a terminal session), raised where the program is, as
    Ctrl-C is: every `finally` and `except BaseException` runs, so staging folders are removed."""


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within this block SIGTERM cleans up as Ctrl-C does (Python's default for it ends the process on the spot,
    leaving the hidden `.OUT.partial-*` folder beside the target). A second SIGTERM during the clean-up is ignored.
    Main thread only (signal handlers live there); the previous handler comes back afterwards."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Optional[List[str]] = None) -> int:
    from ..matplotlib_setup import use_temporary_matplotlib_config

    use_temporary_matplotlib_config()  # nothing written in the user's home folder
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except Cancelled as error:
        print(f"darefuse: {error}", file=sys.stderr)
        return 130
    except Terminated:
        print("darefuse: terminated; nothing was written.", file=sys.stderr)
        return 128 + int(signal.SIGTERM)
    except KeyboardInterrupt:
        print("darefuse: interrupted; nothing was written.", file=sys.stderr)
        return 130
    except DareFuseError as error:
        print(f"darefuse: error: {user_message(error)}", file=sys.stderr)
        return 2
    return int(result or 0)

