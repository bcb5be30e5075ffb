"""The class doubt's choice on development reports (training/class_doubt_eval.py, benchmarks/class_doubt.py)."""
import json
import subprocess
import sys
from pathlib import Path

from DareFuseSlicerLib.constants import CLASSES
from DareFuseSlicerLib.network.model import DareFuseNet, NetConfig
from DareFuseSlicerLib.network.store import read_card, record_metrics, save_model
from DareFuseSlicerLib.training import class_doubt_eval

REPO = Path(__file__).resolve().parents[2]


def row(case_id, truth, reported, top):
    """A per-case row as `darefuse evaluate` writes it: the class head's top class `reported` at `top`."""
    rest = (1.0 - top) / (len(CLASSES) - 1)
    probabilities = {c: (top if c == reported else rest) for c in CLASSES}
    return {"case_id": case_id, "class": truth, "predicted_class": reported, "class_head": reported,
            "class_probabilities": probabilities}


def development_rows():
    """Two wrong classes (at 0.65 and 0.99) and ten right ones, one of them unsure (0.85)."""
    rows = [row("w1", "metastasis", "glioma", 0.65), row("w2", "metastasis", "glioma", 0.99),
            row("r0", "glioma", "glioma", 0.85)]
    return rows + [row(f"r{i}", "meningioma", "meningioma", 0.98) for i in range(1, 10)]


def test_the_table_counts_flagged_wrong_and_right_classes_and_the_rule_caps_false_alarms():
    table = {c["below"]: c for c in class_doubt_eval.candidate_table(development_rows())}
    assert table[0.6] == {"below": 0.6, "wrong": 2, "wrong_flagged": 0, "right": 10, "right_flagged": 0}
    assert (table[0.7]["wrong_flagged"], table[0.7]["right_flagged"]) == (1, 0)
    assert (table[0.9]["wrong_flagged"], table[0.9]["right_flagged"]) == (1, 1)  # 1 of 10: at the cap
    # 0.95 flags what 0.9 does, 1 of 10 right classes (at the cap): the highest within it is chosen.
    assert class_doubt_eval.choose(list(table.values()))["chosen"] == 0.95
    capped = class_doubt_eval.candidate_table(development_rows() + [row("r10", "glioma", "glioma", 0.92)])
    assert class_doubt_eval.choose(capped)["chosen"] == 0.9  # 0.95 flags 2 of 11 right classes: over the cap
    assert class_doubt_eval.choose(class_doubt_eval.candidate_table(development_rows()[1:]))["chosen"] is None


def test_the_benchmark_pools_reports_once_per_case_and_records_its_choice(tmp_path):
    rows = development_rows()
    first = {"data": {"seeds": [1, 6]}, "models": {"m": {"per_case": rows[:6]}}}
    again = {"data": {"seeds": [7, 12]}, "models": {"m": {"per_case": [row("w1", "metastasis", "glioma", 0.75)]
                                                                      + rows[6:]}}}
    paths = []
    for name, report in (("a.json", first), ("b.json", again)):
        paths.append(tmp_path / name)
        paths[-1].write_text(json.dumps(report))
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "class_doubt.py"), *map(str, paths)],
                         capture_output=True, text=True, check=True).stdout
    assert "12 cases from 2 reports" in out  # w1 once, from the last report
    assert "| 0.7 | 0 of 2 | 0 of 10 (0.000) |" in out and "| 0.9 | 1 of 2 | 1 of 10 (0.100) |" in out
    assert json.loads(out.strip().splitlines()[-1])["chosen"] == 0.95
    model = tmp_path / "m" / "darefuse.safetensors"
    save_model(DareFuseNet(NetConfig()), model, {"training_command": "test", "seed": 0})
    record_metrics(model, "held_out", {}, postprocess={"config": {"wt_min_ml": 1.0}, "tuned_on": "val"})
    subprocess.run([sys.executable, str(REPO / "benchmarks" / "class_doubt.py"), *map(str, paths), "--record",
                    str(model)], capture_output=True, text=True, check=True)
    card = read_card(model)
    assert card["postprocess"] == {"config": {"wt_min_ml": 1.0, "class_doubt_below": 0.95}, "tuned_on": "val"}
    assert card["metrics"]["class_doubt_choice"]["chosen_on"] == ["a.json", "b.json"]


def called(case_id, truth, reported, snfh, tc):
    """A row whose map shows `snfh` mL of oedema around `tc` mL of tumour core."""
    return {**row(case_id, truth, reported, 0.99),
            "shown_ml": {"NETC": tc / 2, "SNFH": snfh, "ET": tc / 2, "WT": snfh + tc, "TC": tc}}


def oedema_rows():
    """Two metastases called glioma (oedema 14 and 25 times the core), ten right gliomas (3 times, one 9 times),
    a metastasis called right with 30 times (the doubt questions glioma calls only) and a row of an old report
    without volumes (left out)."""
    rows = [called("w1", "metastasis", "glioma", 140.0, 10.0), called("w2", "metastasis", "glioma", 100.0, 4.0),
            called("r0", "glioma", "glioma", 90.0, 10.0), called("m0", "metastasis", "metastasis", 300.0, 10.0),
            row("old", "metastasis", "glioma", 0.99)]
    return rows + [called(f"r{i}", "glioma", "glioma", 30.0, 10.0) for i in range(1, 10)]


def test_the_oedema_doubt_counts_glioma_calls_and_its_rule_takes_the_lowest_within_the_cap():
    table = {c["above"]: c for c in class_doubt_eval.oedema_candidate_table(oedema_rows())}
    assert table[6.0] == {"above": 6.0, "wrong": 2, "wrong_flagged": 2, "right": 10, "right_flagged": 1}
    assert (table[15.0]["wrong_flagged"], table[15.0]["right_flagged"]) == (1, 0)
    assert (table[20.0]["wrong_flagged"], table[20.0]["right_flagged"]) == (1, 0)
    assert class_doubt_eval.choose_oedema(list(table.values()))["chosen"] == 6.0  # 1 of 10 right: at the cap
    swollen = oedema_rows() + [called("r10", "glioma", "glioma", 70.0, 10.0)]  # 7 times: 2 of 11 above 6
    assert class_doubt_eval.choose_oedema(class_doubt_eval.oedema_candidate_table(swollen))["chosen"] == 8.0
    plain = [r for r in oedema_rows() if r["case_id"] not in ("w1", "w2")]
    assert class_doubt_eval.choose_oedema(class_doubt_eval.oedema_candidate_table(plain))["chosen"] is None


def test_the_benchmark_records_the_oedema_doubt(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps({"data": {"seeds": [1, 14]}, "models": {"m": {"per_case": oedema_rows()}}}))
    model = tmp_path / "m" / "darefuse.safetensors"
    save_model(DareFuseNet(NetConfig()), model, {"training_command": "test", "seed": 0})
    record_metrics(model, "held_out", {}, postprocess={"config": {"class_doubt_below": 0.9}, "tuned_on": "val"})
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "class_doubt.py"), str(path), "--doubt", "oedema",
                          "--record", str(model)], capture_output=True, text=True, check=True).stdout
    assert "| 10 | 2 of 2 | 0 of 10 (0.000) |" in out
    assert ("w1 truth metastasis, reported glioma, class head glioma 0.990, oedema 140.0 mL, core 10.0 mL "
            "(14.0 times)") in out
    assert "right glioma calls above 6 times: 1 of 10; r0 9.0 times" in out
    card = read_card(model)
    assert card["postprocess"]["config"] == {"class_doubt_below": 0.9, "oedema_doubt_above": 6.0}
    assert card["metrics"]["oedema_doubt_choice"]["chosen"] == 6.0
