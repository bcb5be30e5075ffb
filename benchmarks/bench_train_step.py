"""Time of one DareFuseNet training step (two 64x80x64 crops, forward, losses, backward, optimiser step)
in float32 and under bfloat16 autocast, as `darefuse train --precision` runs it. Random inputs: the time
does not depend on the values.

    .venv/bin/python benchmarks/bench_train_step.py --threads 1 --steps 6
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "DareFuseSlicer"))
from DareFuseSlicerLib.network.losses import DareFuseLoss  # noqa: E402
from DareFuseSlicerLib.network.model import DareFuseNet, NetConfig  # noqa: E402
from DareFuseSlicerLib.pipeline.process_stats import cpu_description  # noqa: E402
from DareFuseSlicerLib.training.train import _float32, autocast  # noqa: E402


def step_times(precision: str, steps: int, roi, batch: int) -> list:
    torch.manual_seed(0)
    model = DareFuseNet(NetConfig()).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = DareFuseLoss()
    x = torch.randn(batch, 4, *roi)
    present = torch.ones(batch, 4)
    label = torch.randint(0, 4, (batch, *roi))
    class_index = torch.arange(batch) % 4
    labelled = torch.ones(batch)
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        with autocast(torch.device("cpu"), precision):
            out = _float32(model(x, present))
        terms = loss_fn(out, x, present, label, x, class_index, labelled, kl_weight=1.0)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per precision (the first is dropped)")
    parser.add_argument("--roi", type=int, nargs=3, default=(64, 80, 64))
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(cpu_description())
    print(f"{args.threads} thread(s), batch {args.batch_size} of {tuple(args.roi)}; median of {args.steps - 1} steps after one warm-up")
    medians = {}
    for precision in ("fp32", "bf16"):
        times = step_times(precision, args.steps, tuple(args.roi), args.batch_size)[1:]
        medians[precision] = statistics.median(times)
        print(f"{precision}: {medians[precision]:.2f} s per step  ({', '.join(f'{t:.2f}' for t in times)})", flush=True)
    print(f"bf16 / fp32: {medians['bf16'] / medians['fp32']:.2f}")


if __name__ == "__main__":
    main()
