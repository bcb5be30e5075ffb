"""workerpool.py and workerpool.py without the model: reading a child's lines without blocking, errors rebuilt from the worker's words,
and an inference process that cannot start (no interpreter; torch missing) as one clear error."""
import os
import subprocess
import sys
import time

import pytest

from DareFuseSlicerLib import cli, workerpool
from DareFuseSlicerLib.errors import Cancelled, InputError, OptionError, WorkerError
from DareFuseSlicerLib.logic import DareFuseLogic
from DareFuseSlicerLib.runner import WorkerBug, error_from
from DareFuseSlicerLib.workerpool import LineReader, WorkerPool

import scene_cases

#: A child that writes a line in pieces, pauses, then two lines at once and a last one without a newline.
TALKER = ("import sys, time\n"
          "out = sys.stdout.buffer\n"
          "out.write(b'{\"a\": '); out.flush(); time.sleep(0.3)\n"
          "out.write(b'1}\\n'); out.flush(); time.sleep(0.3)\n"
          "out.write(b'two\\nthree\\nfour'); out.flush()\n")


@pytest.mark.parametrize("use_thread", [False, True], ids=["non-blocking", "reader thread"])
def test_lines_arrive_whole_without_blocking(use_thread):
    child = subprocess.Popen([sys.executable, "-c", TALKER], stdout=subprocess.PIPE)
    reader = LineReader(child.stdout, use_thread=use_thread)
    lines, polls, started = [], 0, time.monotonic()
    while not reader.eof and time.monotonic() - started < 20:
        asked = time.monotonic()
        lines += reader.lines()
        assert time.monotonic() - asked < 0.1  # never waits for the child
        polls += 1
        reader.wait(0.05)
    child.wait(10)
    lines += reader.lines()
    assert lines == [b'{"a": 1}', b"two", b"three", b"four"]
    assert polls > 3  # it was asked while the child was still writing


def test_errors_come_back_with_their_class_and_words():
    option = error_from({"kind": "OptionError", "message": "x", "template": "{device} is unknown",
                         "wording": {"device": "device"}})
    assert isinstance(option, OptionError) and str(option) == "device is unknown"
    assert cli.user_message(option) == "--device is unknown"
    assert type(error_from({"kind": "InputError", "message": "T1: bad"})) is InputError
    assert str(error_from({"kind": "Cancelled", "message": "Cancelled by the user; nothing was added or "
                                                           "written."})) == str(Cancelled())
    bug = error_from({"kind": "bug", "message": "ZeroDivisionError: division by zero", "traceback": "Traceback..."})
    assert isinstance(bug, WorkerBug) and bug.details == "Traceback..." and "ZeroDivisionError" in str(bug)


def test_no_interpreter_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(workerpool.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(workerpool, "interpreter", lambda: str(tmp_path / "no-python"))
    with pytest.raises(WorkerError, match="^The inference process could not be started: "):
        WorkerPool().take()
    assert os.listdir(tmp_path) == []


def test_no_pythonslicer_in_slicer_is_a_clear_error(monkeypatch, tmp_path):
    """Inside the Slicer application the worker must be PythonSlicer (this Python is Slicer's): none found is an
    error before anything is made."""
    monkeypatch.setattr(workerpool.tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(workerpool.sys, "executable", str(tmp_path / "bin" / "SlicerApp-real"))
    monkeypatch.setattr(workerpool.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "slicer", type(sys)("slicer"))
    sys.modules["slicer"].app = object()
    with pytest.raises(WorkerError, match="^Cannot find Slicer's PythonSlicer"):
        WorkerPool().take()
    assert os.listdir(tmp_path) == []


def test_a_worker_without_torch_says_so_once(monkeypatch, tmp_path):
    """As on a machine where the packages are missing: the run ends with one message naming what is missing."""
    shadow = tmp_path / "shadow" / "torch"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(shadow.parent), os.environ.get("PYTHONPATH", "")]))
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(workerpool.tempfile, "tempdir", str(temp))
    scene = scene_cases.new_scene()
    inputs = scene_cases.add_case(scene)
    before = scene_cases.scene_state(scene)
    run = DareFuseLogic(pool=WorkerPool()).start(**inputs)
    assert run.wait(timeout=120)
    with pytest.raises(WorkerError, match=r"^The inference process could not start: ModuleNotFoundError: "
                                          r"No module named 'torch'$"):
        run.finish()
    assert scene_cases.scene_state(scene) == before
    assert os.listdir(temp) == []


def test_a_full_temporary_folder_is_a_clear_error(monkeypatch, tmp_path):
    """Inputs that cannot be written (ENOSPC from the writer) stop the start with one message; the worker just
    started is ended and nothing is left in the temporary folder."""
    import errno

    from DareFuseSlicerLib import exchange

    def full(images, folder):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(exchange, "write_images", full)
    monkeypatch.setattr(workerpool.tempfile, "tempdir", str(tmp_path))
    scene = scene_cases.new_scene()
    inputs = scene_cases.add_case(scene)
    pool = WorkerPool()
    with pytest.raises(WorkerError, match=r"^The inputs could not be written to the temporary folder .*No space "
                                          r"left on device.*nothing was started"):
        DareFuseLogic(pool=pool).start(**inputs)
    assert pool.idle_worker is None and not pool._busy
    assert os.listdir(tmp_path) == []
