"""The label curve's report (benchmarks/label_curve.py report): repeated seeds pooled per arm, and the gap of a
semi-supervised arm to the all-labelled reference, which issue 20's goals bound."""
import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _evaluation(folder: Path, name: str, dice: float, tumour_free_dice: float) -> None:
    """An evaluate report of two cases: a glioma scored `dice` in every region, a tumour-free brain scored
    `tumour_free_dice` (1 when nothing was predicted on it)."""
    cases = [{"class": "glioma", "post": {r: {"dice": dice} for r in ("WT", "TC", "ET")}},
             {"class": "no_tumour", "post": {r: {"dice": tumour_free_dice} for r in ("WT", "TC", "ET")}}]
    report = {"models": {name: {"per_case": cases, "classification": {"accuracy": 0.5},
                                "false_positive_ml_tumour_free": {"with_prior": 0.0}}}}
    (folder / f"eval-{name}.json").write_text(json.dumps(report))


def test_seeds_are_pooled_per_arm_and_the_gap_is_mean_minus_reference_mean(tmp_path):
    _evaluation(tmp_path, "bundled", 0.5, 1.0)
    _evaluation(tmp_path, "labelled-200", 0.9, 1.0)
    _evaluation(tmp_path, "labelled-200-seed1", 0.7, 1.0)
    _evaluation(tmp_path, "semi-10", 0.6, 1.0)
    _evaluation(tmp_path, "semi-10-seed1", 0.8, 0.0)
    _evaluation(tmp_path, "labelled-10", 0.6, 1.0)
    _evaluation(tmp_path, "semi-10-calibrated", 0.75, 1.0)
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "label_curve.py"), "report", "--out",
                          str(tmp_path), "--json", str(tmp_path / "curve.json"), "--figure", str(tmp_path / "curve.png")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    arms = json.loads((tmp_path / "curve.json").read_text())["arms"]
    assert set(arms) == {"labelled-200", "semi-10", "labelled-10", "semi-10-calibrated"}
    assert abs(arms["semi-10-calibrated"]["gap_to_reference"]["WT_tumour"] - (0.75 - 0.8)) < 1e-9
    assert arms["labelled-200"]["seeds"] == [0, 1]
    assert abs(arms["labelled-200"]["WT_tumour"]["mean"] - 0.8) < 1e-9
    # semi-10: tumour cases 0.6 and 0.8; all cases (0.6 + 1) / 2 = 0.8 and (0.8 + 0) / 2 = 0.4
    assert abs(arms["semi-10"]["WT"]["mean"] - 0.6) < 1e-9
    assert (arms["semi-10"]["WT"]["min"], arms["semi-10"]["WT"]["max"]) == (0.4, 0.8)
    assert arms["semi-10"]["reference"] == "labelled-200"
    assert abs(arms["semi-10"]["gap_to_reference"]["WT_tumour"] - (0.7 - 0.8)) < 1e-9
    assert abs(arms["semi-10"]["gap_to_reference"]["WT"] - (0.6 - 0.9)) < 1e-9
    assert "gap_to_reference" not in arms["labelled-10"]
    assert "| semi-10 | 0, 1 | 0.600 (0.400-0.800) |" in out.stdout
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_calibrated_arms_are_named_apart_and_pass_the_flag():
    """--pseudo-precision: the semi-supervised arms become semi-K-calibrated (their own series and gap); the
    labelled-only arms and the reference keep their names."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("label_curve", REPO / "benchmarks" / "label_curve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = [arm["name"] for arm in module.arms([10], 200, seed=1, calibrated=True)]
    assert names == ["labelled-200-seed1", "semi-10-calibrated-seed1", "labelled-10-seed1"]
    assert module._series("semi-10-calibrated-seed1") == "semi-calibrated" and module._series("semi-10") == "semi"
    assert module._series("labelled-200-seed1") == "labelled"
    names = [arm["name"] for arm in module.arms([10], 200, calibrated=True, ramp_up=100)]
    assert names == ["labelled-200", "semi-10-calibrated-ramp100", "labelled-10"]
    assert module._series("semi-10-calibrated-ramp100-seed1") == "semi-calibrated-ramp"
    names = [arm["name"] for arm in module.arms([10], 200, seed=1, calibrated=True, perturbed=True)]
    assert names == ["labelled-200-seed1", "semi-10-calibrated-perturbed-seed1", "labelled-10-seed1"]
    assert module._series("semi-10-calibrated-perturbed-seed1") == "semi-calibrated-perturbed"
    assert {module._series(n) for n in names} <= {series[0] for series in module.SERIES}  # each has its plot style
    names = [arm["name"] for arm in module.arms([10], 200, calibrated=True, gated=True)]
    assert names == ["labelled-200", "semi-10-calibrated-gated", "labelled-10"]
    assert module._series("semi-10-calibrated-perturbed-gated-seed1") == "semi-calibrated-perturbed-gated"
    assert {module._series(n) for n in names} <= {series[0] for series in module.SERIES}
    names = [arm["name"] for arm in module.arms([10], 200, calibrated=True, perturbed=True, gated=True, background=0.99)]
    assert names == ["labelled-200", "semi-10-calibrated-bg99-perturbed-gated", "labelled-10"]
    assert module._series(names[1]) == "semi-calibrated-bg-perturbed-gated"
    assert {module._series(n) for n in names} <= {series[0] for series in module.SERIES}
    names = [arm["name"] for arm in module.arms([10], 200, calibrated=True, perturbed=True, gated=True, background=0.99,
                                                margin=4.0)]
    assert names == ["labelled-200", "semi-10-calibrated-bg99-margin4-perturbed-gated", "labelled-10"]
    assert module._series(names[1]) == "semi-calibrated-bg-margin-perturbed-gated"
    assert {module._series(n) for n in names} <= {series[0] for series in module.SERIES}
    names = [arm["name"] for arm in module.arms([10], 200, calibrated=True, perturbed=True, gated=True, balanced=True)]
    assert names == ["labelled-200", "semi-10-calibrated-perturbed-gated-balanced", "labelled-10"]
    assert module._series(names[1]) == "semi-calibrated-perturbed-gated-balanced"
    assert {module._series(n) for n in names} <= {series[0] for series in module.SERIES}
    given = argparse.Namespace(pseudo_precision=0.95, background_precision=0.99, ramp_up=0, perturb_student=True,
                               pseudo_class_gate=0.95, background_margin=4.0, balance_pseudo_classes=True)
    assert module.semi_flags(given) == ["--pseudo-precision", "0.95", "--background-precision", "0.99",
                                        "--perturb-student", "--pseudo-class-gate", "0.95", "--background-margin", "4.0",
                                        "--balance-pseudo-classes"]
    assert module.semi_flags(argparse.Namespace(pseudo_precision=None, background_precision=None, ramp_up=100,
                                                perturb_student=False, pseudo_class_gate=None, background_margin=0.0,
                                                balance_pseudo_classes=False)) == ["--ramp-up", "100"]
