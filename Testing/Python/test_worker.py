"""The inference process (runner.py, workerpool.py, worker.py) with the bundled model on the sample case, on real scenes.

- start -> finish adds what process() adds in this process (names, kinds, grids, identical labels);
- the scene process never imports torch, MONAI or pytorch-grad-cam (a fresh interpreter: worker_session.py);
- a second run reuses the warm worker; the worker leaves when its parent dies mid-run, and when idle;
- cancel mid-run ends the worker within 2 s and leaves the scene as it was; a killed worker is a clear error.
Nothing may be left in the temporary folder afterwards.
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from DareFuseSlicerLib.errors import Cancelled, InputError, WorkerError
from DareFuseSlicerLib.inputs import load_sample_case
from DareFuseSlicerLib.logic import DareFuseLogic, bundled_model_path
from DareFuseSlicerLib.workerpool import WorkerPool

import scene_cases
import worker_session

pytestmark = pytest.mark.slow  # the bundled model on the sample case, in child processes
HERE = Path(__file__).resolve().parent


def _gone(pid: int, within_s: float) -> float:
    """Seconds until process `pid` no longer exists (or is a zombie); fails after `within_s`."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return time.monotonic() - started
        except FileNotFoundError:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"process {pid} still runs after {within_s} s")


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """worker_session.py in a fresh interpreter, with a temporary folder of its own (TMPDIR)."""
    if not bundled_model_path().is_file():
        pytest.skip(f"no bundled model at {bundled_model_path()}")
    folder = tmp_path_factory.mktemp("session")
    temp = tmp_path_factory.mktemp("session-tmp")
    env = {**os.environ, "TMPDIR": str(temp), "PYTHONPATH": os.pathsep.join([str(HERE.parents[1] / "DareFuseSlicer"),
                                                                             os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(HERE / "worker_session.py"), str(folder)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    recorded = json.loads((folder / "session.json").read_text())
    recorded["orphan_exit_s"] = _gone(recorded["third"]["pid"], within_s=60)
    recorded["folder"], recorded["temp"] = folder, temp
    return recorded


def test_the_scene_process_never_imports_torch(session):
    assert session["heavy_modules"] == []
    assert session["first"]["pid"] != session["scene_pid"]


def test_start_finish_adds_what_process_adds(session):
    """The same nodes as process() in this process: names, classes, segments, grids and voxels."""
    scene = scene_cases.new_scene()
    inputs = load_sample_case(scene)
    here = DareFuseLogic(in_process=True).process(**inputs, outputs=worker_session.FIRST_OUTPUTS)
    local = worker_session.describe(here, inputs["t1"], session["folder"], "local")
    remote = session["first"]["nodes"]
    assert sorted(remote) == sorted(local) == ["difference_prior", "review_points", "review_table", "segmentation",
                                              "tumour_free_flair", "tumour_free_t1", "tumour_free_t1ce",
                                              "tumour_free_t2", "uncertainty", "uncertainty_colours"]
    for kind in local:
        assert {k: v for k, v in remote[kind].items() if k != "ijk_to_ras"} == \
            {k: v for k, v in local[kind].items() if k != "ijk_to_ras"}, kind
        np.testing.assert_allclose(remote[kind]["ijk_to_ras"], local[kind]["ijk_to_ras"], atol=1e-9)
        theirs = np.load(session["folder"] / f"first-{kind}.npy")
        mine = np.load(session["folder"] / f"local-{kind}.npy")
        assert theirs.dtype == mine.dtype, kind
        if kind == "segmentation":
            assert np.array_equal(theirs, mine) and np.count_nonzero(mine) > 1000
        elif kind == "review_table":
            assert theirs.shape == mine.shape and theirs.shape[0] >= 1
            assert np.array_equal(theirs, mine), kind
        else:
            np.testing.assert_allclose(theirs, mine, rtol=1e-5, atol=1e-5, err_msg=kind)


def test_a_second_run_reuses_the_warm_worker(session):
    assert session["second"]["pid"] == session["first"]["pid"]
    assert session["second"]["nodes"]["segmentation"]["segments"] == ["NETC", "SNFH", "ET"]


def test_the_worker_leaves_when_the_scene_process_dies_mid_run(session):
    """worker_session.py left with os._exit during its third run: the worker reads end of input, removes the
    run's folder and its own, and exits; nothing is left in the temporary folder."""
    assert not session["third"]["done"]
    print(f"the orphaned worker left {session['orphan_exit_s']:.2f} s after its parent")
    assert session["orphan_exit_s"] < 30
    assert sorted(os.listdir(session["temp"])) == []


@pytest.fixture()
def case():
    scene = scene_cases.new_scene()
    return scene, load_sample_case(scene)


def _start_and_wait_for_the_pipeline(logic, inputs):
    run = logic.start(**inputs, outputs=("segmentation",))
    deadline = time.monotonic() + 300
    while run.fraction < 0.05 and not run.done:  # the pipeline is working (past start-up and model load)
        assert time.monotonic() < deadline, run.stage
        time.sleep(0.05)
    assert not run.done, run.stage
    return run


def test_cancel_mid_run_ends_the_worker_within_2_s_and_leaves_the_scene(case, tmp_path, monkeypatch):
    scene, inputs = case
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    pool = WorkerPool()
    before = scene_cases.scene_state(scene)
    run = _start_and_wait_for_the_pipeline(DareFuseLogic(pool=pool), inputs)
    pid = run.worker_pid
    started = time.monotonic()
    run.cancel()
    took = time.monotonic() - started
    assert took < 2.0 and _gone(pid, within_s=0.1) < 0.1
    assert run.done
    with pytest.raises(Cancelled):
        run.finish()
    assert scene_cases.scene_state(scene) == before
    assert os.listdir(tmp_path) == [] and pool.idle_worker is None


def test_a_killed_worker_is_a_clear_error_and_the_scene_is_unchanged(case, tmp_path, monkeypatch):
    scene, inputs = case
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    pool = WorkerPool()
    before = scene_cases.scene_state(scene)
    run = _start_and_wait_for_the_pipeline(DareFuseLogic(pool=pool), inputs)
    os.kill(run.worker_pid, signal.SIGKILL)
    assert run.wait(timeout=30)
    with pytest.raises(WorkerError) as raised:
        run.finish()
    message = str(raised.value)
    assert message.startswith("The inference process was ended by signal SIGKILL before the run ended")
    assert "nothing was added to the scene" in message and "Traceback" not in message
    assert not isinstance(raised.value, InputError)
    assert scene_cases.scene_state(scene) == before
    assert os.listdir(tmp_path) == [] and pool.idle_worker is None


def test_an_idle_worker_leaves_after_its_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    pool = WorkerPool(idle_timeout_s=1.0)
    worker = pool.take()
    pool.give_back(worker)
    deadline = time.monotonic() + 300
    while not worker.has_left():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert worker.exit_reason == "idle"
    worker.process.wait(10)
    assert worker.process.returncode == 0
    assert not worker.home.exists()
    pool.shutdown()
    assert os.listdir(tmp_path) == []


def test_a_field_added_to_the_result_later_comes_through_the_worker(tmp_path, monkeypatch):
    """The front end's brain mask (a PipelineResult field added after the worker was written) reaches the
    scene through start -> finish: a whole-head study gets its brain-mask node and its front-end report."""
    import SimpleITK as sitk
    from clinical_helpers import brain_mask_of, pad_for_head, study

    from DareFuseSlicerLib.constants import BRATS_SUFFIX
    from DareFuseSlicerLib.sampledata import sample_case_paths
    from DareFuseSlicerLib.scene import volumes

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    paths = sample_case_paths()
    brains = {c: pad_for_head(sitk.BinShrink(sitk.ReadImage(str(paths[BRATS_SUFFIX[c]]), sitk.sitkFloat32),
                                             [2, 2, 2])) for c in ("t1", "t2")}
    heads = study(brains, brain_mask_of(brains["t1"]), {}, thick=())
    scene = scene_cases.new_scene()
    inputs = {c: volumes.add_volume(scene, image, f"head-{BRATS_SUFFIX[c]}") for c, image in heads.items()}
    pool = WorkerPool()
    try:
        run = DareFuseLogic(pool=pool).start(**inputs, outputs=("segmentation",))
        assert run.wait(timeout=300)
        added = run.finish()
    finally:
        pool.shutdown()
    assert added.report["front_end"]["input_kind"] == "raw"
    mask = added.nodes["brain_mask"]
    assert mask.GetScene() is scene and volumes.same_geometry(heads["t1"], mask)
    voxel_ml = float(np.prod(heads["t1"].GetSpacing())) / 1000.0
    node_ml = float(np.count_nonzero(volumes.volume_array(mask))) * voxel_ml  # the node holds the worker's mask
    assert node_ml > 100 and abs(node_ml - added.report["front_end"]["brain_mask_ml"]) <= 0.05 + voxel_ml
    assert os.listdir(tmp_path) == []
