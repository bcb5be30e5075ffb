"""The unshown-tumour alarm's candidates (training/unshown_eval.py) on development sets: each case is run once by
the pipeline as a user runs it (the model card's post-processing and class gate), then every candidate's alarms on
tumour-free brains, on tumour cases, and the missed lesions it finds are counted; the rule's choice is printed.

    PYTHONPATH=DareFuseSlicer .venv/bin/python benchmarks/unshown_alarm.py run --data SET --out ROWS.json [--threads 1]
    PYTHONPATH=DareFuseSlicer .venv/bin/python benchmarks/unshown_alarm.py choose ROWS.json [...] [--record MODEL]

`run` writes each case's row as soon as it is made (a stopped run keeps what it did and resumes there).
`choose --record MODEL` writes the choice into MODEL's card ("unshown"), which the pipeline then uses.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from case_runs import run_or_choose  # noqa: E402
from DareFuseSlicerLib.network.store import record_metrics  # noqa: E402
from DareFuseSlicerLib.training import lesions, unshown_eval  # noqa: E402


def case_row(result, truth, voxel_ml: float) -> dict:
    return unshown_eval.case_row(result.tumour_probability, sitk.GetArrayViewFromImage(result.label), truth, voxel_ml)


def choose(paths, record=None) -> None:
    rows = [row for path in paths for row in json.loads(Path(path).read_text())]
    table = unshown_eval.candidate_table(rows)
    tumour_free = sum(row["class"] == "no_tumour" for row in rows)
    print(f"{len(rows)} cases, {tumour_free} tumour-free, {table[0]['missed_lesions']} missed lesions "
          f"(at least {lesions.MIN_ML} mL, no shown voxel on them)")
    print("| P(tumour) >= | alarm mL | tumour-free alarms | tumour-case alarms | of which find no missed lesion "
          "| missed lesions found |\n|---|---|---|---|---|---|")
    for c in table:
        print(f"| {c['probability']:g} | {c['alarm_ml']:g} | {c['tumour_free_alarms']} | {c['tumour_case_alarms']} "
              f"| {c['alarms_without_a_missed_lesion']} | {c['missed_lesions_found']} of {c['missed_lesions']} |")
    choice = unshown_eval.choose(table)
    print(json.dumps(choice))
    describe(rows)
    if record is not None and choice["chosen"] is not None:
        sets = sorted({row["set"] for row in rows})
        record_metrics(record, "unshown_alarm_choice", {"candidates": table, **choice},
                       unshown={"config": choice["chosen"], "chosen_on": "development sets " + ", ".join(sets)})
        print(f"recorded in the card of {record}")


def describe(rows) -> None:
    """The missed lesions and the tumour-free brains' largest unshown parts behind the table."""
    missed = [(row, ml) for row in rows for ml in row["missed_lesions_ml"]]
    by_class = {}
    for row, _ in missed:
        by_class[row["class"]] = by_class.get(row["class"], 0) + 1
    cases = {row["case_id"] for row, _ in missed}
    print(f"missed lesions: {len(missed)} in {len(cases)} of {sum(r['class'] != 'no_tumour' for r in rows)} tumour "
          f"cases; by class {by_class}; {sum(row['shown_wt_ml'] > 0 for row, _ in missed)} in cases with tumour "
          f"shown; volumes (mL) {sorted(ml for _, ml in missed)}")
    for row in rows:
        parts = row["parts"]["0.5"]
        if row["class"] == "no_tumour" and parts:
            print(f"tumour-free {row['case_id']}: largest unshown part at P >= 0.5 {parts[0][0]:.2f} mL expected; "
                  f"shown {row['shown_wt_ml']:.2f} mL; low confidence {row['low_confidence']}")
    for row in rows:
        if row["class"] != "no_tumour" and row["shown_wt_ml"] == 0 and row["parts"]["0.5"]:
            print(f"empty map on a tumour case {row['case_id']}: largest unshown part at P >= 0.5 "
                  f"{row['parts']['0.5'][0][0]:.2f} mL expected")


def main(argv=None) -> None:
    run_or_choose(argv, __doc__.splitlines()[0], case_row, choose, keep_margin=True)


if __name__ == "__main__":
    main()
