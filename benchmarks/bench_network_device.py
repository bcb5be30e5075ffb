"""The network stages on an accelerator, in fp32 and in mixed precision: DareFuse's one pass (segmentation,
uncertainty, class, prior), without and with its Grad-CAM++, against SegResNet's plain sliding-window segmentation.

    python benchmarks/bench_network_device.py --device cuda [--runs 5] [--json OUT.json]

Mixed precision is float16 autocast (`pipeline.inference.infer(mixed_precision=True)`; the pipeline runs fp32,
which this benchmark found faster). Only the
work on the device is timed, from a CPU array in to CPU tensors out; the stages around it (reading,
resampling, post-processing, writing) stay on the CPU and are measured by bench_segment.py. Inputs are random
with the bundled sample's shapes: its 2 mm brain box (4x78x93x75, one 80x96x80 window) for DareFuse, its whole
4x240x240x155 volume for SegResNet (window 240x240x160, overlap 0.5). DareFuse runs the bundled weights,
SegResNet random ones (only the time matters). Needs torch, MONAI, pytorch-grad-cam and safetensors, not
SimpleITK or slicer-core, so that it runs on a bare GPU machine. Medians after one warm-up run per row.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "DareFuseSlicer"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from monai.inferers import sliding_window_inference  # noqa: E402

from DareFuseSlicerLib.network.store import load_model  # noqa: E402
from DareFuseSlicerLib.pipeline.inference import infer  # noqa: E402
from DareFuseSlicerLib.pipeline.process_stats import cpu_description  # noqa: E402
from segresnet_plain import OVERLAP, ROI, bundle_segresnet  # noqa: E402

MODEL = ROOT / "DareFuseSlicer" / "Resources" / "Models" / "darefuse.safetensors"
DAREFUSE_SHAPE = (4, 78, 93, 75)
SEGRESNET_SHAPE = (4, 240, 240, 155)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, fn, runs: int) -> dict:
    """Median wall seconds of `fn()` over `runs` runs after one warm-up, and the device's peak memory."""
    fn()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(runs):
        synchronize(device)
        started = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - started)
    row = {"median_s": statistics.median(times), "runs_s": [round(t, 4) for t in times]}
    if device.type == "cuda":
        row["peak_device_mb"] = torch.cuda.max_memory_allocated(device) / 1e6
    return row


def darefuse_row(model: torch.nn.Module, device: torch.device, mixed: bool, runs: int, gradcam: bool) -> dict:
    array = np.random.default_rng(0).standard_normal(DAREFUSE_SHAPE).astype(np.float32)
    present = np.ones(4, np.float32)

    def one_pass():
        out, _, _ = infer(model, array, present, str(device), mixed_precision=mixed, gradcam=gradcam)
        assert not gradcam or ("gradcam" in out and torch.isfinite(out["gradcam"]).all())
        model.class_probabilities(out)

    return timed(device, one_pass, runs)


def segresnet_row(device: torch.device, mixed: bool, runs: int) -> dict:
    model = bundle_segresnet().to(device)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(SEGRESNET_SHAPE).astype(np.float32))[None]

    def plain():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=mixed):
            logits = sliding_window_inference(x.to(device), roi_size=ROI, sw_batch_size=1, predictor=model,
                                              overlap=OVERLAP)
        (torch.sigmoid(logits.float()[0]) > 0.5).cpu()

    return timed(device, plain, runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (for --device cpu)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_description()
    print(f"Device: {name}; torch {torch.__version__}; medians of {args.runs} runs after one warm-up.\n")
    precisions = (("fp32", False), ("mixed (float16)", True)) if device.type == "cuda" else (("fp32", False),)
    rows = {}
    model = load_model(MODEL, str(device))
    print("| precision | DareFuse pass (s) | DareFuse pass + Grad-CAM++ (s) | SegResNet plain (s) | ratio "
          "| DareFuse peak (MB) | SegResNet peak (MB) |")
    print("|---|---|---|---|---|---|---|")
    for label, mixed in precisions:
        bare = darefuse_row(model, device, mixed, args.runs, gradcam=False)
        ours = darefuse_row(model, device, mixed, args.runs, gradcam=True)
        theirs = segresnet_row(device, mixed, args.runs)
        rows[label] = {"darefuse_without_gradcam": bare, "darefuse": ours, "segresnet": theirs}
        print(f"| {label} | {bare['median_s']:.3f} | {ours['median_s']:.3f} | {theirs['median_s']:.3f} "
              f"| {ours['median_s'] / theirs['median_s']:.2f} | {ours.get('peak_device_mb', float('nan')):.0f} "
              f"| {theirs.get('peak_device_mb', float('nan')):.0f} |", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "runs": args.runs,
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
