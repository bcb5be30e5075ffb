"""Issue 20 §4: the label curve on a simulated new site. Dice (WT/TC/ET) and class accuracy on the site's
held-out cases against the number of labelled cases, for the bundled model as it is, fine-tuned on the labelled
cases alone, and fine-tuned on labelled and unlabelled cases (`darefuse adapt`), every run with the same
number of optimiser steps (a wall-clock budget would depend on what else the machine runs); the reference is the model fine-tuned on every pool case labelled.

    .venv/bin/python benchmarks/label_curve.py run --pool POOL --held-out HELD_OUT --out RUNS \
        [--labelled 5 10 20 50] [--steps 150] [--jobs 2] [--seed 0] [--only ARM ...] [--pseudo-precision P]
        [--ramp-up STEPS] [--perturb-student] [--pseudo-class-gate P] [--background-precision P0]
        [--background-margin MM] [--balance-pseudo-classes]
    .venv/bin/python benchmarks/label_curve.py report --out RUNS [--figure docs/images/label_curve.png] [--json F]

`run` makes the splits (`darefuse site-split`), runs every arm (`darefuse adapt`, one thread each, `--jobs`
at a time, one shared `--cache`) and evaluates each model (`darefuse evaluate`, no tuning: the adapted models
keep --init's post-processing). Arms already evaluated are skipped, so an interrupted run can go on.
`report` prints the table (BraTS-convention means and tumour-case-only means), then each arm's mean and range
over its seeds with a semi-supervised arm's gap to the all-labelled reference, and draws the plot.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DareFuseSlicer"))
from DareFuseSlicerLib.network.store import read_card  # noqa: E402
from DareFuseSlicerLib.training.adapt import AdaptOptions  # noqa: E402
from DareFuseSlicerLib.training.recorded_command import differing_flags  # noqa: E402

BUNDLED = ROOT / "DareFuseSlicer" / "Resources" / "Models" / "darefuse.safetensors"
REGIONS = ("WT", "TC", "ET")
NO_TUMOUR = "no_tumour"
# adapt's options a semi-supervised arm passes on where given (run's flags of the same names)
SEMI_OPTIONS = ("pseudo_precision", "background_precision", "ramp_up", "perturb_student", "pseudo_class_gate",
                "background_margin", "balance_pseudo_classes")


def darefuse(*args: str, log: Path) -> None:
    command = [sys.executable, "-m", "DareFuseSlicerLib.cli", *args]
    with open(log, "a") as handle:
        handle.write(f"$ darefuse {' '.join(args)}\n")
        handle.flush()
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT / "DareFuseSlicer"), "OMP_NUM_THREADS": "1"})
    if result.returncode != 0:
        raise RuntimeError(f"darefuse {args[0]} failed (exit {result.returncode}); see {log}")


def arms(labelled: List[int], pool_size: int, seed: int = 0, calibrated: bool = False, ramp_up: int = 0,
         perturbed: bool = False, gated: bool = False, background: Optional[float] = None,
         margin: float = 0.0, balanced: bool = False) -> List[dict]:
    """name, split, whether the unlabelled folder is used, seed; the all-labelled reference first. A seed other
    than 0 repeats the arms (names end in -seedN) to show how much a run's own randomness moves the figures.
    Semi-supervised arms with per-class calibrated pseudo-label thresholds are named semi-K-calibrated, with a
    ramp-up of the pseudo-label weight semi-K[-calibrated]-rampN, with adapt's --perturb-student
    semi-K[-calibrated][-rampN]-perturbed, with --pseudo-class-gate ...-gated; --background-precision 0.99 adds
    -bg99 after -calibrated, --background-margin 4 -margin4 after that; --balance-pseudo-classes ends in
    -balanced."""
    suffix = f"-seed{seed}" if seed else ""
    semi = ("-calibrated" if calibrated else "") + (f"-bg{round(100 * background)}" if background else "") + \
        (f"-margin{margin:g}" if margin else "") + \
        (f"-ramp{ramp_up}" if ramp_up else "") + \
        ("-perturbed" if perturbed else "") + ("-gated" if gated else "") + ("-balanced" if balanced else "")
    found = [{"name": f"labelled-{pool_size}{suffix}", "k": pool_size, "semi": False, "seed": seed}]
    for k in labelled:
        found += [{"name": f"semi-{k}{semi}{suffix}", "k": k, "semi": True, "seed": seed},
                  {"name": f"labelled-{k}{suffix}", "k": k, "semi": False, "seed": seed}]
    return found


def semi_flags(args: argparse.Namespace) -> List[str]:
    """adapt's flags for the SEMI_OPTIONS run was given (those that differ from adapt's defaults)."""
    return differing_flags(args, AdaptOptions(init="", labelled="", unlabelled="", out=""), SEMI_OPTIONS)


def run_arm(arm: dict, args: argparse.Namespace) -> str:
    out = Path(args.out)
    report = out / f"eval-{arm['name']}.json"
    if report.is_file():
        return f"{arm['name']}: already evaluated"
    split = out / "splits" / f"split-{arm['k']}"
    run = out / arm["name"]
    log = out / f"{arm['name']}.log"
    adapt = ["adapt", "--init", str(BUNDLED), "--labelled", str(split / "labelled"), "--out", str(run),
             "--steps", str(args.steps), "--minutes", "600", "--seed", str(arm["seed"]), "--threads", "1", "--cache", str(out / "cache"), "--no-progress"]
    if arm["semi"]:
        adapt[5:5] = ["--unlabelled", str(split / "unlabelled")]
        adapt += semi_flags(args)
    if not (run / "darefuse.safetensors").is_file():
        darefuse(*adapt, log=log)
    evaluate(arm["name"], run / "darefuse.safetensors", args, log)
    return f"{arm['name']}: done"


def evaluate(name: str, model: Path, args: argparse.Namespace, log: Path) -> None:
    darefuse("evaluate", "--data", str(args.held_out), "--model", f"{name}={model}", "--threads", "1",
             "--out", str(Path(args.out) / f"eval-{name}"), log=log)


def command_run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pool_size = sum(1 for p in Path(args.pool).glob("*-seg.nii.gz"))
    for k in sorted(set(args.labelled + [pool_size])):
        if not (out / "splits" / f"split-{k}").is_dir():
            darefuse("site-split", "--pool", str(args.pool), "--labelled", str(k),
                     "--out", str(out / "splits" / f"split-{k}"), log=out / "splits.log")
    jobs = arms(args.labelled, pool_size, args.seed, calibrated=args.pseudo_precision is not None, ramp_up=args.ramp_up,
                perturbed=args.perturb_student, gated=args.pseudo_class_gate is not None,
                background=args.background_precision, margin=args.background_margin,
                balanced=args.balance_pseudo_classes)
    if args.no_reference:
        jobs = jobs[1:]
    if args.only:
        jobs = [arm for arm in jobs if arm["name"] in args.only or arm["name"].split("-seed")[0] in args.only]
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_arm, arm, args) for arm in jobs]
        if not (out / "eval-bundled.json").is_file():
            futures.append(pool.submit(evaluate, "bundled", BUNDLED, args, out / "bundled.log"))
        for future in futures:
            print(future.result() or "bundled: done", f"({time.monotonic() - start:.0f} s)", flush=True)


def summary(report: Path) -> dict:
    """Means over all held-out cases (BraTS convention: an empty truth and an empty prediction score 1) and
    over the tumour cases only, of the post-processed Dice; class accuracy; tumour volume predicted on the
    tumour-free cases (what pulls the BraTS-convention means below the tumour-case means)."""
    data = json.loads(report.read_text())
    (name, model), = data["models"].items()
    cases = model["per_case"]
    tumour = [c for c in cases if c["class"] != NO_TUMOUR]
    row = {"name": name, "cases": len(cases), "tumour_cases": len(tumour),
           "accuracy": model["classification"]["accuracy"],
           "fp_ml": model["false_positive_ml_tumour_free"]["with_prior"]}
    for region in REGIONS:
        row[region] = sum(c["post"][region]["dice"] for c in cases) / len(cases)
        row[f"{region}_tumour"] = sum(c["post"][region]["dice"] for c in tumour) / len(tumour)
    return row


def training_facts(run: Path) -> dict:
    """The adapted model's card: its steps (the same minutes buy fewer steps with unlabelled crops)."""
    model = run / "darefuse.safetensors"
    if not model.is_file():
        return {}
    return read_card(model).get("training", {})


def command_report(args: argparse.Namespace) -> None:
    out = Path(args.out)
    rows = [summary(p) for p in sorted(out.glob("eval-*.json"))]
    if not rows:
        raise SystemExit(f"no eval-*.json under {out}: run `label_curve.py run` first")
    rows.sort(key=_order)
    print("| model | labelled | seed | steps | s/step | Dice WT | Dice TC | Dice ET | tumour cases: WT | TC | ET | class accuracy | FP mL, tumour-free |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        facts = training_facts(out / row["name"])
        print(f"| {row['name']} | {_labelled(row['name'])} | {_seed(row['name'])} | {facts.get('steps') or '-'} | "
              f"{facts.get('mean_step_s') or '-'} | "
              + " | ".join(f"{row[r]:.3f}" for r in REGIONS) + " | "
              + " | ".join(f"{row[r + '_tumour']:.3f}" for r in REGIONS) + f" | {row['accuracy']:.3f} | {row['fp_ml']:.2f} |")
    print(f"\n{rows[0]['cases']} held-out cases ({rows[0]['tumour_cases']} with tumour), `{out}`")
    per_arm = arm_summary(rows)
    print_seed_summary(per_arm)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "arms": per_arm}, indent=1) + "\n")
        print(f"json: {args.json}")
    if args.figure:
        plot(per_arm, next((r for r in rows if r["name"] == "bundled"), None), Path(args.figure))
        print(f"figure: {args.figure}")


KEYS = REGIONS + tuple(f"{r}_tumour" for r in REGIONS) + ("accuracy",)


def arm_summary(rows: List[dict]) -> dict:
    """Per arm (its name without -seedN): the seeds run, and the mean, lowest and highest of each figure over
    them; for a semi-supervised arm also its gap to the all-labelled reference (mean minus mean), which is
    what issue 20's goals bound (within 0.03)."""
    arms_found: dict = {}
    for row in rows:
        if row["name"] != "bundled":
            arms_found.setdefault(row["name"].split("-seed")[0], []).append(row)
    reference = _reference(arms_found)
    found = {}
    for arm, members in arms_found.items():
        found[arm] = {"seeds": sorted(int(_seed(m["name"])) for m in members)}
        for key in KEYS:
            values = [m[key] for m in members]
            found[arm][key] = {"mean": sum(values) / len(values), "min": min(values), "max": max(values)}
    for arm, figures in found.items():
        if arm.startswith("semi") and reference:
            figures["gap_to_reference"] = {key: figures[key]["mean"] - found[reference][key]["mean"] for key in KEYS}
            figures["reference"] = reference
    return found


def print_seed_summary(summary: dict) -> None:
    print("\n| arm | seeds | Dice WT | Dice TC | Dice ET | tumour cases: WT | TC | ET | class accuracy | "
          "gap to the reference: WT / TC / ET | tumour cases: WT / TC / ET |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for arm in sorted(summary, key=lambda a: _order({"name": a})):
        figures = summary[arm]
        cells = [f"{figures[k]['mean']:.3f} ({figures[k]['min']:.3f}-{figures[k]['max']:.3f})" for k in KEYS]
        gap = figures.get("gap_to_reference")
        gaps = ["-", "-"] if gap is None else [" / ".join(f"{gap[r]:+.3f}" for r in REGIONS),
                                              " / ".join(f"{gap[r + '_tumour']:+.3f}" for r in REGIONS)]
        print(f"| {arm} | {', '.join(map(str, figures['seeds']))} | " + " | ".join(cells + gaps) + " |")
    print("\nmean over seeds (lowest-highest); gaps: a semi-supervised arm's mean minus the all-labelled arm's mean")


def _reference(arm_names) -> Optional[str]:
    """The all-labelled reference: the labelled-only arm with the most labelled cases."""
    return max((a for a in arm_names if a.startswith("labelled")), key=lambda a: int(_labelled(a)), default=None)


def _labelled(name: str) -> str:
    return "0" if name == "bundled" else name.split("-")[1]


def _seed(name: str) -> str:
    return name.split("-seed")[1] if "-seed" in name else ("-" if name == "bundled" else "0")


def _order(row: dict):
    name = row["name"]
    return (0, 0, "") if name == "bundled" else (1 if name.startswith("semi") else 2, int(_labelled(name)), _seed(name))


SERIES = (("semi", "o-", 1.03, "labelled + unlabelled"),
          ("semi-ramp", "^-", 1.05, "labelled + unlabelled, weight ramped up"),
          ("semi-calibrated", "D-", 1.07, "labelled + unlabelled, calibrated pseudo-labels"),
          ("semi-calibrated-ramp", "v-", 1.11, "labelled + unlabelled, calibrated, weight ramped up"),
          ("semi-calibrated-perturbed", "P-", 1.15, "labelled + unlabelled, calibrated, student perturbed"),
          ("semi-calibrated-gated", "X-", 1.19, "labelled + unlabelled, calibrated, class-gated"),
          ("semi-calibrated-perturbed-gated", "*-", 1.23, "labelled + unlabelled, calibrated, perturbed, class-gated"),
          ("semi-calibrated-bg-perturbed-gated", "h-", 1.27,
           "labelled + unlabelled, calibrated (background stricter), perturbed, class-gated"),
          ("semi-calibrated-bg-margin-perturbed-gated", "p-", 1.31,
           "labelled + unlabelled, calibrated (background stricter, margin), perturbed, class-gated"),
          ("semi-calibrated-perturbed-gated-balanced", "8-", 1.35,
           "labelled + unlabelled, calibrated, perturbed, class-gated, classes balanced"),
          ("labelled", "s--", 1 / 1.03, "labelled alone"))


def _series(name: str) -> str:
    """labelled, or semi with its variants: -calibrated, -bgN, -marginN, -rampN, -perturbed, -gated, -balanced."""
    base = name.split("-seed")[0]
    variants = ("calibrated", "bg", "margin", "ramp", "perturbed", "gated", "balanced")
    return "-".join([base.split("-")[0]] + [v for v in variants if f"-{v}" in base])


def plot(summary: dict, bundled: Optional[dict], path: Path) -> None:
    """Dice WT/TC/ET and class accuracy against the labelled cases: each arm's mean over its seeds, with bars
    from the lowest to the highest seed; the all-labelled reference as a line over a band of its seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    ks = sorted({int(_labelled(a)) for a in summary})
    reference = _reference(summary)
    fig, axes = plt.subplots(1, 4, figsize=(15, 4.0), sharex=True)
    for ax, key in zip(axes, REGIONS + ("accuracy",)):
        for series, style, shift, label in SERIES:
            arm = sorted((int(_labelled(a)), f[key]) for a, f in summary.items()
                         if _series(a) == series and a != reference)
            if arm:
                x = [k * shift for k, _ in arm]
                mean = [f["mean"] for _, f in arm]
                bars = [[f["mean"] - f["min"] for _, f in arm], [f["max"] - f["mean"] for _, f in arm]]
                ax.errorbar(x, mean, yerr=bars, fmt=style, capsize=3, label=label)
        if reference in summary:
            ref = summary[reference][key]
            ax.axhline(ref["mean"], color="k", lw=1, label=f"all {_labelled(reference)} labelled")
            ax.axhspan(ref["min"], ref["max"], color="k", alpha=0.08)
        if bundled is not None:
            ax.axhline(bundled[key], color="grey", ls=":", label="bundled, not adapted")
        ax.set_xscale("log")
        ax.set_xticks([k for k in ks if f"labelled-{k}" != reference])
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title("class accuracy" if key == "accuracy" else f"Dice {key}")
        ax.set_xlabel("labelled cases")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle("mean over seeds; bars and the grey band: lowest to highest seed", fontsize=9)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--pool", required=True)
    run.add_argument("--held-out", required=True)
    run.add_argument("--out", required=True)
    run.add_argument("--labelled", type=int, nargs="+", default=[5, 10, 20, 50])
    run.add_argument("--steps", type=int, default=150, help="optimiser steps per arm (the same for every arm)")
    run.add_argument("--jobs", type=int, default=2)
    run.add_argument("--seed", type=int, default=0, help="adapt's seed (crops, order); not 0: repeated arms")
    run.add_argument("--no-reference", action="store_true", help="leave out the all-labelled reference arm")
    run.add_argument("--only", nargs="+", help="run only these arms (names as in the report, e.g. semi-10; "
                     "without -seedN: that arm of --seed)")
    run.add_argument("--pseudo-precision", type=float, metavar="P",
                     help="semi-supervised arms with adapt's per-class calibrated thresholds (named semi-K-calibrated)")
    run.add_argument("--ramp-up", type=int, default=0, metavar="STEPS",
                     help="semi-supervised arms with adapt's --ramp-up STEPS (names end in -rampSTEPS)")
    run.add_argument("--perturb-student", action="store_true",
                     help="semi-supervised arms with adapt's --perturb-student (names end in -perturbed)")
    run.add_argument("--pseudo-class-gate", type=float, metavar="P",
                     help="semi-supervised arms with adapt's --pseudo-class-gate P (names end in -gated)")
    run.add_argument("--background-precision", type=float, metavar="P0",
                     help="with --pseudo-precision: adapt's --background-precision P0 (names get -bgN, N = 100 P0)")
    run.add_argument("--background-margin", type=float, default=0.0, metavar="MM",
                     help="semi-supervised arms with adapt's --background-margin MM (names get -marginMM)")
    run.add_argument("--balance-pseudo-classes", action="store_true",
                     help="semi-supervised arms with adapt's --balance-pseudo-classes (names end in -balanced)")
    report = sub.add_parser("report")
    report.add_argument("--out", required=True)
    report.add_argument("--figure")
    report.add_argument("--json", help="write every row and the per-arm summary here")
    args = parser.parse_args(argv)
    command_run(args) if args.command == "run" else command_report(args)


if __name__ == "__main__":
    main()
