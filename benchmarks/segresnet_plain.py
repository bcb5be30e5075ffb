"""A plain segmentation by MONAI's SegResNet as the BraTS bundle configures it: the yardstick for issue 5.

Run as its own process (so its peak memory is its own):
    python benchmarks/segresnet_plain.py --t1 A --t1ce B --t2 C --flair D --out seg.nii.gz
Random weights: only the time matters. Prints one JSON line of timings.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

T0 = time.perf_counter()

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "DareFuseSlicer"))
from DareFuseSlicerLib.pipeline.process_stats import process_age_s  # noqa: E402 (standard library only)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from monai.inferers import sliding_window_inference  # noqa: E402
from monai.networks.nets import SegResNet  # noqa: E402
from monai.transforms import NormalizeIntensity  # noqa: E402


#: The MONAI BraTS bundle's inferer: window and overlap (sw_batch_size 1).
ROI = (240, 240, 160)
OVERLAP = 0.5


def bundle_segresnet() -> torch.nn.Module:
    """MONAI's SegResNet as the BraTS bundle configures it, random weights, in eval mode."""
    return SegResNet(blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), init_filters=16, in_channels=4,
                     out_channels=3, dropout_prob=0.2).eval()


def main() -> None:
    import SimpleITK as sitk  # here, not above: bench_network_device.py imports this file where it is missing

    parser = argparse.ArgumentParser()
    for name in ("t1", "t1ce", "t2", "flair"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    timings = {"import": time.perf_counter() - T0}

    t = time.perf_counter()
    images = [sitk.ReadImage(getattr(args, n), sitk.sitkFloat32) for n in ("t1", "t1ce", "t2", "flair")]
    array = np.stack([sitk.GetArrayFromImage(i) for i in images])
    timings["load"] = time.perf_counter() - t

    t = time.perf_counter()
    x = NormalizeIntensity(nonzero=True, channel_wise=True)(torch.from_numpy(array))[None]
    timings["normalise"] = time.perf_counter() - t

    model = bundle_segresnet()

    def predictor(window):  # the model, with the start of the first window noted (start-up, as DareFuse's)
        timings.setdefault("first_window_s", process_age_s())
        return model(window)

    t = time.perf_counter()
    with torch.inference_mode():
        logits = sliding_window_inference(x, roi_size=ROI, sw_batch_size=1, predictor=predictor,
                                          overlap=OVERLAP)
    timings["network"] = time.perf_counter() - t

    t = time.perf_counter()
    regions = (torch.sigmoid(logits[0]) > 0.5).numpy()
    label = np.zeros(regions.shape[1:], np.uint8)
    label[regions[1]] = 2  # channels TC, WT, ET (the bundle's order) -> BraTS labels
    label[regions[0]] = 1
    label[regions[2]] = 3
    out = sitk.GetImageFromArray(label)
    out.CopyInformation(images[0])
    sitk.WriteImage(out, args.out, useCompression=True)
    timings["write"] = time.perf_counter() - t

    timings["total"] = time.perf_counter() - T0
    timings["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps(timings))


if __name__ == "__main__":
    main()
