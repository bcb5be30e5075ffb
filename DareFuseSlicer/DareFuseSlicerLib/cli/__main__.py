"""`python -m DareFuseSlicerLib.cli`: the same as the `darefuse` command."""
import sys

from . import main

sys.exit(main())
