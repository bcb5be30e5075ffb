"""Choosing the enhancement rule on development rows (training/enhancement_eval.py): known answers."""
from DareFuseSlicerLib.constants import CLASSES
from DareFuseSlicerLib.training import enhancement_eval


def _row(truth, head, et_ml, wt_ml=10.0, reported=None):
    probabilities = {c: 0.9 if c == head else 0.1 / (len(CLASSES) - 1) for c in CLASSES}
    return {"case_id": f"{truth}-{head}-{et_ml}", "class": truth, "class_head": head,
            "class_probabilities": probabilities, "predicted_class": reported or head,
            "shown_ml": {"ET": et_ml, "WT": wt_ml}}


def test_candidates_count_what_each_would_change_and_the_rule_chooses():
    rows = [
        _row("glioma", "meningioma", 0.0),  # a non-enhancing glioma called meningioma: every candidate mends it
        _row("metastasis", "metastasis", 0.3),  # a small metastasis shown with little ET: 0.5 and 1 break it
        _row("glioma", "metastasis", 0.8),  # only 1.0 mends it
        _row("meningioma", "meningioma", 0.0, wt_ml=0.0),  # nothing shown: never acts
        _row("meningioma", "meningioma", 0.0, reported="no_tumour"),  # another rule's class: left alone
        _row("glioma", "glioma", 0.0),  # already glioma
    ]
    table = {c["et_ml"]: c for c in enhancement_eval.candidate_table(rows)}
    assert [table[v]["acts"] for v in (0.0, 0.1, 0.5, 1.0)] == [1, 1, 2, 3]
    assert [table[v]["made_right"] for v in (0.0, 0.1, 0.5, 1.0)] == [1, 1, 1, 2]
    assert [table[v]["made_wrong"] for v in (0.0, 0.1, 0.5, 1.0)] == [0, 0, 1, 1]
    assert abs(table[0.0]["accuracy"] - 4 / 6) < 1e-9 and abs(table[1.0]["accuracy"] - 4 / 6) < 1e-9
    # 0 and 0.1 mend one and break none: a tie, the smaller volume wins.
    assert enhancement_eval.choose(list(table.values()))["chosen"] == 0.0
    # A candidate that breaks a right class is never chosen, however many it mends.
    assert enhancement_eval.choose(enhancement_eval.candidate_table(rows[1:3], (1.0,)))["chosen"] is None
    assert enhancement_eval.choose(enhancement_eval.candidate_table(rows[3:]))["chosen"] is None  # mends none
