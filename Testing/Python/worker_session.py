"""A scene process in a fresh interpreter, as Slicer is one: run by test_worker.py as a script.

    python worker_session.py OUT_DIR

On the bundled sample case it runs start -> finish twice through the inference process (the second reuses the
warm worker), records what was added (describe()) and which modules this process imported, then starts a third
run and leaves without any clean-up in the middle of it (os._exit), as when Slicer is closed or killed mid-run.
Everything it saw goes to OUT_DIR/session.json (and the voxel arrays to .npy files) before it leaves.
"""
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

#: The layers of the compared runs: the segmentation, a single image and a dict of images (tumour-free).
FIRST_OUTPUTS = ("segmentation", "uncertainty", "prior")
HEAVY_MODULES = ("torch", "monai", "pytorch_grad_cam")


def describe(outputs, reference_node, folder: Path, prefix: str) -> dict:
    """Each added node: name, class, voxel grid (dimensions, IJK-to-RAS); voxels saved as prefix-kind.npy."""
    from DareFuseSlicerLib.scene import segmentation, volumes

    reference = volumes.volume_node_to_image(reference_node, "reference")
    described = {}
    for kind, node in outputs.nodes.items():
        if node.IsA("vtkMRMLSegmentationNode"):
            array = segmentation.labels_array(node, reference)
            grid = {"dims": list(reference.GetSize()), "ijk_to_ras": volumes.ijk_to_ras(reference).tolist()}
            names = [node.GetSegmentation().GetNthSegment(i).GetName()
                     for i in range(node.GetSegmentation().GetNumberOfSegments())]
        elif node.IsA("vtkMRMLVolumeNode"):
            array = volumes.volume_array(node)
            grid = {"dims": list(node.GetImageData().GetDimensions()),
                    "ijk_to_ras": volumes.node_ijk_to_ras(node).tolist()}
            names = []
        else:  # the review's table, points and the uncertainty's colour table
            array, grid, names = _contents(node), {"dims": [], "ijk_to_ras": []}, []
        np.save(folder / f"{prefix}-{kind}.npy", array)
        described[kind] = {"name": node.GetName(), "class": node.GetClassName(), "segments": names, **grid}
    return described


def _contents(node) -> np.ndarray:
    """A table's cells (text), a point list's positions (RAS), a colour table's RGBA colours."""
    if node.IsA("vtkMRMLTableNode"):
        table = node.GetTable()
        return np.array([[table.GetValue(row, column).ToString() for column in range(table.GetNumberOfColumns())]
                         for row in range(table.GetNumberOfRows())], dtype=str).reshape(-1, table.GetNumberOfColumns())
    if node.IsA("vtkMRMLMarkupsNode"):
        return np.array([node.GetNthControlPointPosition(i) for i in range(node.GetNumberOfControlPoints())],
                        np.float64).reshape(-1, 3)
    if node.IsA("vtkMRMLColorTableNode"):
        rgba = [0.0] * 4
        return np.array([(node.GetColor(i, rgba), list(rgba))[1] for i in range(node.GetNumberOfColors())])
    raise AssertionError(f"{node.GetClassName()}: not described")


def main(folder: Path) -> None:
    from DareFuseSlicerLib.inputs import load_sample_case
    from DareFuseSlicerLib.logic import DareFuseLogic
    from DareFuseSlicerLib.scene import files

    scene = files.new_scene()
    inputs = load_sample_case(scene)
    logic = DareFuseLogic()
    session = {}
    for name, outputs in (("first", FIRST_OUTPUTS), ("second", ("segmentation",))):
        started = time.perf_counter()
        run = logic.start(**inputs, outputs=outputs)
        run.wait()
        added = run.finish()
        session[name] = {"seconds": round(time.perf_counter() - started, 2), "pid": run.worker_pid,
                         "nodes": describe(added, inputs["t1"], folder, name)}
    session["heavy_modules"] = [name for name in HEAVY_MODULES if name in sys.modules]
    session["scene_pid"] = os.getpid()

    run = logic.start(**inputs, outputs=("segmentation",))
    while run.fraction < 0.05 and not run.done:  # the pipeline is working
        time.sleep(0.05)
    session["third"] = {"pid": run.worker_pid, "done": run.done, "folder": str(run.folder)}
    (folder / "session.json").write_text(json.dumps(session))
    os._exit(0)  # no clean-up: as when the application is closed or killed mid-run


if __name__ == "__main__":
    main(Path(sys.argv[1]))
