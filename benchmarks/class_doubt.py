"""The class doubt chosen on development sets: for each candidate threshold, how many wrong and right classes of
`darefuse evaluate` reports it would flag low confidence (training/class_doubt_eval.py), pooled over the reports
(a case in several reports counts once, from the last given). The rule that decided it is in the raw model's card.

    PYTHONPATH=DareFuseSlicer .venv/bin/python benchmarks/class_doubt.py REPORT.json [...] [--record MODEL]

`--record MODEL` writes the choice into MODEL's card (postprocess.config.class_doubt_below).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_choice import one_model  # noqa: E402
from DareFuseSlicerLib.network.store import read_card, record_metrics  # noqa: E402
from DareFuseSlicerLib.training import class_doubt_eval  # noqa: E402


def report_rows(paths) -> dict:
    """case id -> its per-case row (with `report`, the file it came from), from each report's one model."""
    rows = {}
    for path in paths:
        for row in one_model(path)[1]["per_case"]:
            rows[row["case_id"]] = {**row, "report": Path(path).name}
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+")
    parser.add_argument("--record", help="the model file whose card takes the choice")
    args = parser.parse_args(argv)
    rows = list(report_rows(args.reports).values())
    table = class_doubt_eval.candidate_table(rows)
    print(f"{len(rows)} cases from {len(args.reports)} reports")
    print("| class head's top probability below | wrong classes flagged | right classes flagged |\n|---|---|---|")
    for c in table:
        print(f"| {c['below']:g} | {c['wrong_flagged']} of {c['wrong']} | {c['right_flagged']} of {c['right']} "
              f"({c['right_flagged'] / max(c['right'], 1):.3f}) |")
    for row in rows:
        if row["predicted_class"] != row["class"]:
            top = max(row["class_probabilities"].values())
            print(f"  {row['case_id']} truth {row['class']}, reported {row['predicted_class']}, class head "
                  f"{row['class_head']} {top:.3f}")
    choice = class_doubt_eval.choose(table)
    print(json.dumps(choice))
    if args.record and choice["chosen"] is not None:
        postprocess = read_card(args.record)["postprocess"]
        postprocess["config"]["class_doubt_below"] = choice["chosen"]
        reports = sorted({row["report"] for row in rows})
        record_metrics(args.record, "class_doubt_choice",
                       {"candidates": table, **choice, "chosen_on": reports, "cases": len(rows),
                        "rule": f"the highest of {list(class_doubt_eval.CANDIDATES)} flagging at most "
                                f"{class_doubt_eval.MAX_RIGHT_FLAGGED:.0%} of the right classes and at least one "
                                "wrong one"},
                       postprocess=postprocess)
        print(f"recorded in the card of {args.record}")


if __name__ == "__main__":
    main()
