"""matplotlib's cache, kept out of the user's home folder by the command line.

On its first import matplotlib writes a font list into ~/.config/matplotlib or ~/.cache/matplotlib (or into
MPLCONFIGDIR). MONAI and pytorch-grad-cam import it as they load, and overview.png is drawn with it. The
command line writes only into its output folder and the temporary folder, so its process points
MPLCONFIGDIR at a temporary folder removed at exit (rebuilding the font list costs about 0.2 s). Inside
Slicer nothing changes: the application, not the module, owns matplotlib's settings.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile


def use_temporary_matplotlib_config() -> None:
    """For this process; a user's own MPLCONFIGDIR is kept."""
    if os.environ.get("MPLCONFIGDIR"):
        return
    folder = tempfile.mkdtemp(prefix="darefuse-matplotlib-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["MPLCONFIGDIR"] = folder
