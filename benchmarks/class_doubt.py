"""The doubts on the reported class chosen on development sets: for each candidate threshold, how many wrong and
right classes of `darefuse evaluate` reports it would flag low confidence (training/class_doubt_eval.py), pooled
over the reports (a case in several reports counts once, from the last given). The rules that decided them are in
the raw model's card.

    PYTHONPATH=DareFuseSlicer .venv/bin/python benchmarks/class_doubt.py REPORT.json [...] [--doubt oedema]
        [--record MODEL]

--doubt class (the default): the class head's top probability below a threshold (class_doubt_below);
--doubt oedema: a glioma call whose map's oedema is more than a threshold times its tumour core
(oedema_doubt_above). `--record MODEL` writes the choice into MODEL's card (postprocess.config).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from model_choice import one_model  # noqa: E402
from DareFuseSlicerLib.network.store import read_card, record_metrics  # noqa: E402
from DareFuseSlicerLib.pipeline.postprocess import OEDEMA_DOUBTED_CLASS, oedema_ratio  # noqa: E402
from DareFuseSlicerLib.training.class_doubt_eval import DOUBTS, Doubt  # noqa: E402


def report_rows(paths) -> dict:
    """case id -> its per-case row (with `report`, the file it came from), from each report's one model."""
    rows = {}
    for path in paths:
        for row in one_model(path)[1]["per_case"]:
            rows[row["case_id"]] = {**row, "report": Path(path).name}
    return rows


def print_table(doubt: Doubt, rows: list, table: list) -> None:
    print(f"| {doubt.heading} | wrong {doubt.calls} flagged | right {doubt.calls} flagged |\n|---|---|---|")
    for c in table:
        print(f"| {c[doubt.key]:g} | {c['wrong_flagged']} of {c['wrong']} | {c['right_flagged']} of {c['right']} "
              f"({c['right_flagged'] / max(c['right'], 1):.3f}) |")
    for row in rows:
        if row["predicted_class"] != row["class"]:
            top = max(row["class_probabilities"].values())
            shown = row.get("shown_ml")
            oedema = f", oedema {shown['SNFH']:.1f} mL, core {shown['TC']:.1f} mL ({_ratio(shown)})" if shown else ""
            print(f"  {row['case_id']} truth {row['class']}, reported {row['predicted_class']}, class head "
                  f"{row['class_head']} {top:.3f}{oedema}")


def _ratio(shown: dict) -> str:
    ratio = oedema_ratio(shown)
    return "no oedema" if ratio is None else f"{ratio:.1f} times"


def print_right_glioma_ratios(rows: list, lowest: float) -> None:
    """The right glioma calls whose oedema over core exceeds the lowest candidate: the oedema doubt's false alarms."""
    ratios = {row["case_id"]: oedema_ratio(row["shown_ml"]) for row in rows if "shown_ml" in row
              and row["class"] == row["predicted_class"] == OEDEMA_DOUBTED_CLASS}
    right = {case: ratio for case, ratio in ratios.items() if ratio is not None}
    above = sorted(((case, ratio) for case, ratio in right.items() if ratio > lowest), key=lambda item: -item[1])
    print(f"  right {OEDEMA_DOUBTED_CLASS} calls above {lowest:g} times: {len(above)} of {len(right)}"
          + "".join(f"; {case} {ratio:.1f} times" for case, ratio in above))


def record(model: str, name: str, table: list, choice: dict, rows: list) -> None:
    doubt = DOUBTS[name]
    postprocess = read_card(model)["postprocess"]
    postprocess["config"][doubt.setting] = choice["chosen"]
    reports = sorted({row["report"] for row in rows})
    record_metrics(model, f"{name}_doubt_choice",
                   {"candidates": table, **choice, "chosen_on": reports, "cases": len(rows), "rule": doubt.rule},
                   postprocess=postprocess)
    print(f"recorded in the card of {model}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+")
    parser.add_argument("--doubt", choices=sorted(DOUBTS), default="class")
    parser.add_argument("--record", help="the model file whose card takes the choice")
    args = parser.parse_args(argv)
    rows = list(report_rows(args.reports).values())
    doubt = DOUBTS[args.doubt]
    table = doubt.table(rows)
    print(f"{len(rows)} cases from {len(args.reports)} reports")
    print_table(doubt, rows, table)
    if args.doubt == "oedema":
        print_right_glioma_ratios(rows, min(c["above"] for c in table))
    choice = doubt.choose(table)
    print(json.dumps(choice))
    if args.record and choice["chosen"] is not None:
        record(args.record, args.doubt, table, choice, rows)


if __name__ == "__main__":
    main()
