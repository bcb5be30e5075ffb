"""Where `darefuse segment`'s start-up goes: each step up to the first sliding window, timed on its own.

    .venv/bin/python benchmarks/startup_breakdown.py [--runs 3] [--outputs default|no-gradcam]
    .venv/bin/python benchmarks/startup_breakdown.py --overlap read|read+preprocess [--runs 3]

Each run is a fresh process (imports are paid once per process) doing, in the command line's order, what
`darefuse segment` does on the bundled sample case before its first window: the interpreter, the imports
(torch, MONAI with what it imports, pytorch-grad-cam, slicer-core with VTK, DareFuse's own modules), the
header checks, the scene, reading the four volumes through Slicer's storage nodes, copying them to SimpleITK,
loading the model, the voxel checks and the pre-processing. Prints wall and CPU seconds per step (CPU: all of
the process's threads; on a busy machine compare CPU) as medians over the runs. Imports are attributed to
the first step that needs them, in that order: "MONAI" holds torchvision, torch._dynamo, matplotlib, pandas,
scikit-learn, SciPy... that MONAI's package initialiser imports.

--overlap is an experiment, not the command line: the imports and the model load in a second thread while
the main thread reads the case (`read`), or reads and pre-processes it (`read+preprocess`: what a pipeline
whose pre-processing can start before the model is there would allow). Threads help only where one side
releases the GIL (SimpleITK's filters do; imports and VTK's readers do not). There, a step's CPU time holds
both threads' work; compare the wall times.

For the imports themselves: .venv/bin/python -X importtime -c "import DareFuseSlicerLib.pipeline.run" 2> it.txt
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: The child: one run, printing {step: [wall, cpu]} as JSON on its last line.
CHILD = r'''
import json, os, sys, threading, time

mode, outputs, root = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, os.path.join(root, "DareFuseSlicer"))
from DareFuseSlicerLib.pipeline.process_stats import process_age_s  # standard library only

steps = {"interpreter (process start to first line)": [process_age_s(), time.process_time()]}

def step(name, fn):
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    steps[name] = [time.perf_counter() - wall, time.process_time() - cpu]
    return value

def imports():
    step("import torch", lambda: __import__("torch"))
    step("import MONAI (and what it imports)", lambda: __import__("monai"))
    if outputs == "default":
        step("import pytorch-grad-cam (rest)", lambda: __import__("pytorch_grad_cam"))

def model_load():
    from DareFuseSlicerLib.logic import DareFuseLogic
    return DareFuseLogic().model(None)

def read_case():
    from DareFuseSlicerLib.phantoms import sample_case_paths
    from DareFuseSlicerLib.constants import BRATS_SUFFIX, CONTRASTS
    sample = sample_case_paths()
    paths = {c: str(sample[BRATS_SUFFIX[c]]) for c in CONTRASTS}
    from DareFuseSlicerLib import headless
    step("header checks", lambda: headless.check_inputs(paths))
    step("import slicer-core (and the VTK modules it needs)", lambda: __import__("slicer"))
    step("import DareFuse scene and logic modules", lambda: __import__("DareFuseSlicerLib.logic"))
    from DareFuseSlicerLib.logic import DareFuseLogic
    from DareFuseSlicerLib.scene import files
    scene = step("scene set-up", files.new_scene)
    nodes = step("read the inputs (storage nodes)", lambda: {c: files.load_volume(scene, p) for c, p in paths.items()})
    return step("copy nodes to SimpleITK (logic.prepare)", lambda: DareFuseLogic().prepare(**nodes))

def preprocess(prepared):
    from DareFuseSlicerLib.pipeline import preprocess, validate
    checked, _ = step("voxel checks (validate)", lambda: validate.check_images(prepared.images))
    step("pre-processing", lambda: preprocess.prepare(checked))

def heavy():
    imports()
    step("import DareFuse pipeline modules (rest)", lambda: __import__("DareFuseSlicerLib.pipeline.run"))
    step("model load", model_load)

start_wall = time.perf_counter()
if mode == "sequential":
    step("import DareFuse command line", lambda: __import__("DareFuseSlicerLib.cli"))
    prepared = read_case()
    heavy()
    preprocess(prepared)
else:
    __import__("DareFuseSlicerLib.cli")
    worker = threading.Thread(target=heavy)
    worker.start()
    prepared = read_case()
    if mode == "read+preprocess":
        preprocess(prepared)
    steps["main thread done"] = [time.perf_counter() - start_wall, 0.0]
    worker.join()
    steps["worker done"] = [time.perf_counter() - start_wall, 0.0]
    if mode == "read":
        preprocess(prepared)
steps["total: process start to first window"] = [process_age_s(), time.process_time()]
print(json.dumps(steps))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--outputs", choices=("default", "no-gradcam"), default="default",
                        help="no-gradcam: as `darefuse segment --skip gradcam` (no pytorch-grad-cam import)")
    parser.add_argument("--overlap", choices=("read", "read+preprocess"), default=None)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    mode = args.overlap or "sequential"
    runs = []
    for _ in range(args.runs):
        done = subprocess.run([sys.executable, "-c", CHILD, mode, args.outputs, str(ROOT)], capture_output=True,
                              text=True, env=env, cwd=ROOT)
        if done.returncode != 0:
            raise SystemExit(done.stderr[-3000:])
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"`darefuse segment` start-up on the bundled sample, {mode}, outputs {args.outputs}, "
          f"{os.cpu_count()} cores, medians of {args.runs} run(s):\n")
    print("| step | wall (s) | CPU (s) |")
    print("|---|---|---|")
    for name in runs[0]:
        wall = statistics.median(r[name][0] for r in runs)
        cpu = statistics.median(r[name][1] for r in runs)
        print(f"| {name} | {wall:.2f} | {cpu:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
