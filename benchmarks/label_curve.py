"""Issue 20 §4: the label curve on a simulated new site. Dice (WT/TC/ET) and class accuracy on the site's
held-out cases against the number of labelled cases, for the bundled model as it is, fine-tuned on the labelled
cases alone, and fine-tuned on labelled and unlabelled cases (`darefuse adapt`), every run with the same
number of optimiser steps (a wall-clock budget would depend on what else the machine runs); the reference is the model fine-tuned on every pool case labelled.

    .venv/bin/python benchmarks/label_curve.py run --pool POOL --held-out HELD_OUT --out RUNS \
        [--labelled 5 10 20 50] [--steps 150] [--jobs 2]
    .venv/bin/python benchmarks/label_curve.py report --out RUNS [--figure docs/images/label_curve.png]

`run` makes the splits (`darefuse site-split`), runs every arm (`darefuse adapt`, one thread each, `--jobs`
at a time, one shared `--cache`) and evaluates each model (`darefuse evaluate`, no tuning: the adapted models
keep --init's post-processing). Arms already evaluated are skipped, so an interrupted run can go on.
`report` prints the table (BraTS-convention means and tumour-case-only means) and draws the plot.
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

BUNDLED = ROOT / "DareFuseSlicer" / "Resources" / "Models" / "darefuse.safetensors"
REGIONS = ("WT", "TC", "ET")
NO_TUMOUR = "no_tumour"


def darefuse(*args: str, log: Path) -> None:
    command = [sys.executable, "-m", "DareFuseSlicerLib.cli", *args]
    with open(log, "a") as handle:
        handle.write(f"$ darefuse {' '.join(args)}\n")
        handle.flush()
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT / "DareFuseSlicer"), "OMP_NUM_THREADS": "1"})
    if result.returncode != 0:
        raise RuntimeError(f"darefuse {args[0]} failed (exit {result.returncode}); see {log}")


def arms(labelled: List[int], pool_size: int, seed: int = 0) -> List[dict]:
    """name, split, whether the unlabelled folder is used, seed; the all-labelled reference first. A seed other
    than 0 repeats the arms (names end in -seedN) to show how much a run's own randomness moves the figures."""
    suffix = f"-seed{seed}" if seed else ""
    found = [{"name": f"labelled-{pool_size}{suffix}", "k": pool_size, "semi": False, "seed": seed}]
    for k in labelled:
        found += [{"name": f"semi-{k}{suffix}", "k": k, "semi": True, "seed": seed},
                  {"name": f"labelled-{k}{suffix}", "k": k, "semi": False, "seed": seed}]
    return found


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
    jobs = arms(args.labelled, pool_size, args.seed)
    if args.no_reference:
        jobs = jobs[1:]
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
    if args.figure:
        plot(rows, Path(args.figure))
        print(f"figure: {args.figure}")


def _labelled(name: str) -> str:
    return "0" if name == "bundled" else name.split("-")[1]


def _seed(name: str) -> str:
    return name.split("-seed")[1] if "-seed" in name else ("-" if name == "bundled" else "0")


def _order(row: dict):
    name = row["name"]
    return (0, 0, "") if name == "bundled" else (1 if name.startswith("semi") else 2, int(_labelled(name)), _seed(name))


def plot(rows: List[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    bundled = next((r for r in rows if r["name"] == "bundled"), None)
    ks = sorted({int(_labelled(r["name"])) for r in rows if r["name"] != "bundled"})
    reference = max(ks) if ks else None
    fig, axes = plt.subplots(1, 4, figsize=(15, 4.0), sharex=True)
    for ax, key in zip(axes, REGIONS + ("accuracy",)):
        for prefix, style in (("semi", "o-"), ("labelled", "s--")):
            arm = [r for r in rows if r["name"].startswith(prefix) and int(_labelled(r["name"])) != reference]
            pts = sorted((int(_labelled(r["name"])), r[key]) for r in arm if _seed(r["name"]) == "0")
            if pts:
                line, = ax.plot(*zip(*pts), style,
                                label={"semi": "labelled + unlabelled", "labelled": "labelled alone"}[prefix])
                repeats = [(int(_labelled(r["name"])), r[key]) for r in arm if _seed(r["name"]) != "0"]
                if repeats:
                    ax.plot(*zip(*repeats), style[0], mfc="none", color=line.get_color(), label=f"{prefix}: other seed")
        ref = next((r for r in rows if r["name"] == f"labelled-{reference}"), None)
        if ref is not None:
            ax.axhline(ref[key], color="k", lw=1, label=f"all {reference} labelled")
        for other in (r for r in rows if r["name"].startswith(f"labelled-{reference}-seed")):
            ax.axhline(other[key], color="k", lw=0.8, ls="-.", label=f"all {reference} labelled: other seed")
        if bundled is not None:
            ax.axhline(bundled[key], color="grey", ls=":", label="bundled, not adapted")
        ax.set_xscale("log")
        ax.set_xticks([k for k in ks if k != reference])
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title("class accuracy" if key == "accuracy" else f"Dice {key}")
        ax.set_xlabel("labelled cases")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
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
    report = sub.add_parser("report")
    report.add_argument("--out", required=True)
    report.add_argument("--figure")
    args = parser.parse_args(argv)
    command_run(args) if args.command == "run" else command_report(args)


if __name__ == "__main__":
    main()
