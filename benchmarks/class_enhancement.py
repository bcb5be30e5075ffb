"""The class and the map disagreeing on enhancement: for each case, run once by the pipeline as a user runs it, the
class head's decision beside the shown map's volumes (ET above all), and what each candidate of the enhancement
rule (postprocess.reported_class: meningioma or metastasis with no enhancing tumour shown is reported as glioma)
would do to the class. The rule that decided it is in the README (Reliability) and the raw model's card.

    PYTHONPATH=DareFuseSlicer .venv/bin/python benchmarks/class_enhancement.py run --data SET --out ROWS.json [--threads 1]
    PYTHONPATH=DareFuseSlicer .venv/bin/python benchmarks/class_enhancement.py choose ROWS.json [...] [--record MODEL]

`run` writes each case's row as soon as it is made (a stopped run keeps what it did and resumes there).
`choose --record MODEL` writes the choice into MODEL's card (postprocess.config.non_enhancing_glioma_ml).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from case_runs import run_or_choose  # noqa: E402
from DareFuseSlicerLib.network.store import read_card, record_metrics  # noqa: E402
from DareFuseSlicerLib.pipeline.postprocess import ET  # noqa: E402
from DareFuseSlicerLib.training import enhancement_eval  # noqa: E402


def case_row(result, truth: np.ndarray, voxel_ml: float) -> dict:
    probabilities = result.class_probabilities
    return {"class_head": max(probabilities, key=probabilities.get), "predicted_class": result.predicted_class,
            "class_probabilities": probabilities, "shown_ml": result.volumes_ml,
            "truth_et_ml": round(float(np.count_nonzero(truth == ET)) * voxel_ml, 3)}


def choose(paths, record=None) -> None:
    rows = [row for path in paths for row in json.loads(Path(path).read_text())]
    table = enhancement_eval.candidate_table(rows)
    right = sum(row["predicted_class"] == row["class"] for row in rows)
    print(f"{len(rows)} cases; class right without the rule: {right} ({right / len(rows):.3f})")
    print("| shown ET <= mL | acts on | wrong made right | right made wrong | accuracy |\n|---|---|---|---|---|")
    for c in table:
        print(f"| {c['et_ml']:g} | {c['acts']} | {c['made_right']} | {c['made_wrong']} | {c['accuracy']:.3f} |")
    for row in rows:
        if enhancement_eval.acts(row, max(enhancement_eval.CANDIDATES_ML)):
            print(f"  {row['case_id']} truth {row['class']} (truth ET {row['truth_et_ml']} mL): class head "
                  f"{row['class_head']} {row['class_probabilities'][row['class_head']]:.2f}, shown ET "
                  f"{row['shown_ml']['ET']:.2f} of WT {row['shown_ml']['WT']:.2f} mL")
    choice = enhancement_eval.choose(table)
    print(json.dumps(choice))
    if record is not None and choice["chosen"] is not None:
        sets = sorted({row["set"] for row in rows})
        postprocess = read_card(record)["postprocess"]
        postprocess["config"]["non_enhancing_glioma_ml"] = choice["chosen"]
        record_metrics(record, "enhancement_rule_choice",
                       {"candidates": table, **choice, "chosen_on": "development sets " + ", ".join(sets)},
                       postprocess=postprocess)
        print(f"recorded in the card of {record}")


def main(argv=None) -> None:
    run_or_choose(argv, __doc__.splitlines()[0], case_row, choose)


if __name__ == "__main__":
    main()
