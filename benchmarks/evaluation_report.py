"""An evaluation report's Markdown from its JSON, with today's tables (e.g. the tumour-case-only Dice means
added after the report was made), so a report is re-rendered without re-running `darefuse evaluate`.

    .venv/bin/python benchmarks/evaluation_report.py docs/evaluation-darefuse-raw-v1-clinical.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "DareFuseSlicer"))
from DareFuseSlicerLib.training.evaluate import markdown_report  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", help="OUT.json written by darefuse evaluate")
    parser.add_argument("--out", help="write the Markdown here instead of printing it")
    args = parser.parse_args(argv)
    text = markdown_report(json.loads(Path(args.report).read_text()))
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
