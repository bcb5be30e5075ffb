"""Killed runs and full disks on the command line: nothing left behind, and words a user understands.

- SIGTERM while `darefuse segment` writes: the hidden `.OUT.partial-*` folder is removed (as for Ctrl-C), exit
  status 143, one line;
- a disk without room for the results: refused before writing, saying how much space they need; a disk that
  fills while writing (ENOSPC from Python, or the bare failure ITK and MRML report): the same message, nothing
  left. On a real tiny file system (a tmpfs in a private mount namespace) where the machine allows one.
"""
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from DareFuseSlicerLib import cli
from DareFuseSlicerLib.pipeline import diskspace, outputs
from DareFuseSlicerLib.pipeline.run import run
from pipeline_helpers import four_contrasts, head, save_tiny_model, tiny_model, write

ROOT = Path(__file__).resolve().parents[2]
#: Runs the command line with one writer slowed down (the overview sleeps after drawing), so that a signal
#: lands while the results are being written; DAREFUSE_TEST_NO_PRECHECK skips the free-space check, so that a
#: full disk is met by the writers themselves.
WRAPPER = """
import os, sys, time
from DareFuseSlicerLib.pipeline import diskspace, outputs
if os.environ.get("DAREFUSE_TEST_SLOW_OVERVIEW"):
    drawn = outputs.render_overview
    def slow(result, path, **kw):
        drawn(result, path, **kw)
        print("WRITING", flush=True)  # on stdout: stderr is held while the results are written
        time.sleep(3)
    outputs.render_overview = slow
if os.environ.get("DAREFUSE_TEST_NO_PRECHECK"):
    diskspace.check_free_space = lambda folder, needed: None
from DareFuseSlicerLib import cli
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("interrupted")
    (folder / "wrapper.py").write_text(WRAPPER)
    return {"model": str(save_tiny_model(folder)), "t1": write(head(lesion_mm=15.0), folder / "case-t1n.nii.gz"),
            "wrapper": str(folder / "wrapper.py")}


def _env(**extra):
    paths = [str(ROOT / "DareFuseSlicer"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths), **extra}


def _segment_argv(files, out):
    return ["segment", "--t1", files["t1"], "--model", files["model"], "--output-dir", str(out)]


def _hidden(folder: Path):
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_sigterm_while_writing_removes_the_partial_folder(files, tmp_path):
    out = tmp_path / "OUT"
    child = subprocess.Popen([sys.executable, files["wrapper"], *_segment_argv(files, out), "--quiet"],
                             cwd=tmp_path, env=_env(DAREFUSE_TEST_SLOW_OVERVIEW="1"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    lines = []
    for line in child.stdout:
        lines.append(line)
        if line.strip() == "WRITING":
            break
    assert any(name.startswith(".OUT.partial-") for name in _hidden(tmp_path)), lines  # it is writing now
    child.send_signal(signal.SIGTERM)
    _, rest = child.communicate(timeout=60)
    assert child.returncode == 143, rest
    assert rest.strip().splitlines()[-1] == "darefuse: terminated; nothing was written."
    assert "Traceback" not in rest
    assert sorted(os.listdir(tmp_path)) == []  # no OUT, no .OUT.partial-*, no .darefuse-* staging


def test_sigterm_is_turned_into_an_interrupt_only_inside_the_block():
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(cli.Terminated):
        with cli.terminate_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises at the next instruction
    assert signal.getsignal(signal.SIGTERM) is previous


@pytest.fixture(scope="module")
def case():
    images = four_contrasts(lesion_mm=15.0)
    model = tiny_model()
    model.card = {"name": "tiny", "version": "9.9", "sha256": "ab" * 32, "architecture": "DareFuseNet"}
    return run(images, model, spacing_mm=4.0)


def test_too_little_free_space_is_refused_before_writing(case, tmp_path, monkeypatch):
    monkeypatch.setattr(diskspace, "free_bytes", lambda folder: 300_000)
    needed = diskspace.estimate_bytes(case, copies=1)
    assert needed > 1_000_000
    with pytest.raises(diskspace.DiskFull) as refused:
        outputs.write_outputs(case, tmp_path / "out")
    assert str(refused.value) == (
        f"Not enough free disk space for the results in {tmp_path / 'out'}: they need about "
        f"{diskspace.megabytes(needed)}, 0.3 MB is free; nothing was written. Free some space or choose an output "
        "folder on another disk.")
    assert os.listdir(tmp_path) == []


def test_the_estimate_covers_what_is_written(case, tmp_path):
    written = outputs.write_outputs(case, tmp_path / "out")
    size = sum(path.stat().st_size for path in written.values())
    assert size < diskspace.estimate_bytes(case, copies=1)


@pytest.mark.parametrize("failure", ["ENOSPC from Python", "MRML without a reason"])
def test_a_disk_that_fills_while_writing_is_said_to_be_full(case, tmp_path, monkeypatch, failure):
    real_free = diskspace.free_bytes

    def bundle(staging):
        if failure == "ENOSPC from Python":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(staging / "scene.mrb"))
        monkeypatch.setattr(diskspace, "free_bytes", lambda folder: 4096)  # the disk is full now
        raise RuntimeError("Slicer could not write 'scene.mrb': Failed to save scene to data bundle directory")

    with pytest.raises(diskspace.DiskFull, match="^Not enough free disk space for the results in .*nothing was "
                                                 "written"):
        outputs.write_outputs(case, tmp_path / "out", extra_writers=[bundle])
    assert os.listdir(tmp_path) == []
    assert real_free(tmp_path) > 0


def test_a_writer_bug_with_room_on_the_disk_keeps_its_own_error(case, tmp_path):
    def broken(staging):
        raise RuntimeError("a bug in a writer")

    with pytest.raises(RuntimeError, match="^a bug in a writer$"):
        outputs.write_outputs(case, tmp_path / "out", extra_writers=[broken])
    assert os.listdir(tmp_path) == []


def _tiny_filesystem_available(tmp_path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    done = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs '{probe}'"],
                          capture_output=True)
    probe.rmdir()
    return done.returncode == 0


@pytest.mark.parametrize("precheck", [True, False], ids=["refused before writing", "full while writing"])
def test_a_real_full_disk(files, tmp_path, precheck):
    """`darefuse segment` into a 128 KiB tmpfs: one line saying the disk is full and how much is needed, exit
    status 2, and nothing left on that disk (listed from inside the mount namespace, which ends with it)."""
    if not _tiny_filesystem_available(tmp_path):
        pytest.skip("no private mount namespace here (unshare -rm): the full-disk paths are covered above")
    disk, listing = tmp_path / "disk", tmp_path / "listing.txt"
    disk.mkdir()
    script = ('mount -t tmpfs -o size=128k tmpfs "$0" || exit 99; shift; "$@"; status=$?; '
              f'ls -A "{disk}" > "{listing}"; exit $status')
    env = _env(**({} if precheck else {"DAREFUSE_TEST_NO_PRECHECK": "1"}))
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script, str(disk), "x", sys.executable, files["wrapper"],
                           *_segment_argv(files, disk / "OUT"), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith(f"darefuse: error: Not enough free disk space for the results "
                                                   f"in {disk / 'OUT'}: they need about "), lines
    assert listing.read_text() == ""
