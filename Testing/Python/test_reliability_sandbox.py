"""Sandbox: a real `darefuse segment` run on the bundled sample case reaches no network and writes nothing
outside its output folder and TMPDIR.

The child process gets fresh, empty HOME, TMPDIR, cache and config folders and working directory. An audit hook
installed in it (sitecustomize.py) logs every network event and every Python-level write. Writes made in C++
(ITK, VTK) never reach the hook, so HOME, the working directory and the repository are also compared before and
after the run. The companion tests show that each check catches what it is looking for.
"""
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import slicer  # noqa: F401  slicer-core is a hard dependency: without it these tests fail, never skip

from DareFuseSlicerLib.constants import BRATS_SUFFIX, CONTRASTS
from DareFuseSlicerLib.phantoms import sample_case_paths


ROOT = Path(__file__).resolve().parents[2]
# Ignored by git (.gitignore) or written by other work while this test runs (training runs, data).
NOT_SOURCE = {".venv", ".git", "data", "runs", "__pycache__", ".hypothesis", ".pytest_cache", "build", "out",
              "work", ".whl", ".gl", "darefuse-demo"}
# urllib3 (imported by MONAI through requests) checks for IPv6 by binding a socket to ::1, port 0, and closing it
# again: nothing is sent or received, so a loopback bind is not network access.
LOOPBACK_BIND = re.compile(r"socket\.bind \(.*\('(::1|127\.0\.0\.1)', 0\)\)")

HOOK = r'''
import os
import sys

_log = os.open(os.environ["DAREFUSE_AUDIT_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
_NETWORK = {"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
            "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo", "urllib.Request",
            "http.client.connect", "ftplib.connect", "smtplib.connect", "webbrowser.open"}
# event -> positions of (path, dir_fd) pairs among its arguments that the event writes, moves or removes
_CHANGES = {"os.mkdir": [(0, 2)], "os.rename": [(0, 2), (1, 3)], "os.remove": [(0, 1)], "os.rmdir": [(0, 1)],
            "os.symlink": [(1, 2)], "os.link": [(1, 3)], "os.truncate": [(0, None)], "os.chmod": [(0, 2)],
            "os.chown": [(0, 3)], "os.utime": [(0, 3)], "shutil.copyfile": [(1, None)],
            "shutil.copymode": [(1, None)], "shutil.copystat": [(1, None)], "shutil.copytree": [(1, None)],
            "shutil.move": [(0, None), (1, None)], "shutil.rmtree": [(0, 1)], "shutil.make_archive": [(0, None)]}
_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _write(kind, event, detail):
    # os.write raises no audit event of its own, so logging cannot recurse.
    line = f"{kind}\t{event}\t{detail}".replace("\n", " ") + "\n"
    os.write(_log, line.encode("utf-8", "backslashreplace"))


def _absolute(path, dir_fd):
    if isinstance(path, int):
        return None  # an already open descriptor: its opening was logged
    path = os.fsdecode(path)
    if isinstance(dir_fd, int) and dir_fd >= 0 and not os.path.isabs(path):  # as shutil.rmtree removes
        path = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), path)
    return os.path.abspath(path)


def _hook(event, args):
    try:
        _check(event, args)
    except Exception as error:  # a hook that raises would fail the run it is watching: log it instead
        _write("error", event, repr(error))


def _check(event, args):
    if event in _NETWORK:
        _write("net", event, repr(args)[:300])
    elif event == "open":
        path, mode, flags = args
        if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & _WRITING:
            _write("write", event, _absolute(path, None))
    elif event in _CHANGES:
        for at, fd_at in _CHANGES[event]:
            path = _absolute(args[at], args[fd_at] if fd_at is not None and fd_at < len(args) else None)
            if path is not None:
                _write("write", event, path)


sys.addaudithook(_hook)
_write("hook", "installed", str(os.getpid()))
'''


def sandbox(tmp_path):
    """Environment for a child process: fresh empty folders for everything that names a place to write,
    and the audit hook loaded before anything else (sitecustomize.py first on PYTHONPATH)."""
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    home, tmp, cwd = tmp_path / "home", tmp_path / "tmp", tmp_path / "cwd"
    env = dict(os.environ)
    env.update({
        "HOME": str(home), "TMPDIR": str(tmp), "TEMP": str(tmp), "TMP": str(tmp),
        "XDG_CACHE_HOME": str(home / ".cache"), "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"), "XDG_STATE_HOME": str(home / ".local" / "state"),
        "TORCH_HOME": str(home / ".cache" / "torch"),
        "PYTHONPATH": os.pathsep.join([str(hook_dir)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
        "DAREFUSE_AUDIT_LOG": str(tmp_path / "audit.log"),
        # The interpreter's own bytecode cache is not the product's writing; site-packages is compiled at install.
        "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1",
    })
    # Unset, as for most users. torch sets TORCHINDUCTOR_CACHE_DIR in its own process (this pytest's, too)
    # once it has chosen a cache folder, so a child would otherwise inherit the parent's choice.
    for key in ("MPLCONFIGDIR", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "PYTHONPYCACHEPREFIX"):
        env.pop(key, None)
    for key in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "TORCH_HOME",
                "TMPDIR", "HOME"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    cwd.mkdir()
    return env, cwd


def audit(tmp_path):
    """(network events, written paths) from the child's audit log; fails if the hook never ran."""
    lines = [line.split("\t", 2) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert lines and lines[0][:2] == ["hook", "installed"], "the audit hook was not loaded in the child"
    network = [f"{event} {detail}" for kind, event, detail in lines if kind == "net"]
    assert [line for line in lines if line[0] == "error"] == []
    written = [(event, os.path.realpath(detail)) for kind, event, detail in lines if kind == "write"]
    return network, written


def snapshot(*roots):
    """path -> (size, mtime_ns) of every file and folder under `roots` (a folder's mtime changes when an entry
    is created or removed in it, so a file made and deleted again is seen too)."""
    state = {}
    for root in roots:
        for folder, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if d not in NOT_SOURCE and not d.endswith(".egg-info")]
            state[folder] = (None, os.lstat(folder).st_mtime_ns)
            for name in names:
                info = os.lstat(os.path.join(folder, name))
                state[os.path.join(folder, name)] = (info.st_size, info.st_mtime_ns)
    return state


def changes(before, after):
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


def under(path, folder):
    return os.path.commonpath([path, os.path.realpath(folder)]) == os.path.realpath(folder)


def network_access(network):
    return [event for event in network if not LOOPBACK_BIND.fullmatch(event)]


def outside(written, out, tmpdir):
    """The writes that are neither in the output folder, nor in TMPDIR, nor the staging folder beside the
    output folder (results are written there, then moved in one rename), nor the creation of its parents."""
    staging = str(Path(out).parent / f".{Path(out).name}.partial-")
    return [(event, path) for event, path in written
            if not (under(path, out) or under(path, tmpdir) or path.startswith(staging) or path == os.devnull
                    or (event == "os.mkdir" and under(str(out), path)))]


def test_snapshot_sees_a_created_and_a_changed_file(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "old.txt").write_text("x")
    before = snapshot(tmp_path)
    assert changes(before, snapshot(tmp_path)) == []
    (tmp_path / "a" / "new.txt").write_text("y")
    (tmp_path / "a" / "old.txt").write_text("xx")
    assert changes(before, snapshot(tmp_path)) == [str(tmp_path / "a"), str(tmp_path / "a" / "new.txt"),
                                                   str(tmp_path / "a" / "old.txt")]


def test_the_hook_catches_a_connection_attempt_and_writes_outside(tmp_path):
    env, cwd = sandbox(tmp_path)
    with socket.socket() as probe:  # a port free a moment ago; the attempt is logged either way
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code = ("import os, shutil, socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "except OSError:\n"
            "    pass\n"
            "open(os.path.join(os.environ['HOME'], 'note.txt'), 'w').close()\n"
            "os.replace(os.path.join(os.environ['HOME'], 'note.txt'), 'moved.txt')\n"
            "os.makedirs('made/inner')\n"
            "shutil.rmtree('made')\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    network, written = audit(tmp_path)
    assert any(n.startswith("socket.connect ") and str(port) in n for n in network_access(network)), network
    home, cwd = os.path.realpath(env["HOME"]), os.path.realpath(cwd)
    flagged = outside(written, tmp_path / "results" / "case", env["TMPDIR"])
    # rmtree removes the inner folder with os.rmdir relative to a folder descriptor: resolved by the hook
    for event, path in [("open", f"{home}/note.txt"), ("os.rename", f"{home}/note.txt"),
                        ("os.rename", f"{cwd}/moved.txt"), ("os.mkdir", f"{cwd}/made/inner"),
                        ("shutil.rmtree", f"{cwd}/made"), ("os.rmdir", f"{cwd}/made/inner")]:
        assert (event, path) in flagged, (event, path, written)


@pytest.mark.slow  # one whole run of the BraTS-size sample case in a fresh process: ~40 s on a busy 2-core CPU
def test_segment_uses_no_network_and_writes_only_its_output_and_tmpdir(tmp_path):
    env, cwd = sandbox(tmp_path)
    sample = sample_case_paths()
    results = tmp_path / "results"
    results.mkdir()
    out = results / "case"
    # --skip prior saves time and is array arithmetic only; Grad-CAM++ stays, as it loads pytorch-grad-cam.
    argv = ["segment", "--output-dir", str(out), "--threads", "1", "--quiet", "--skip", "prior"]
    for contrast in CONTRASTS:
        argv += [f"--{contrast}", str(sample[BRATS_SUFFIX[contrast]])]
    watched = (env["HOME"], str(cwd), str(ROOT))
    before = snapshot(*watched)
    done = subprocess.run([sys.executable, "-m", "DareFuseSlicerLib.cli", *argv], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (out / "report.json").is_file()

    network, written = audit(tmp_path)
    assert network_access(network) == []
    assert outside(written, out, env["TMPDIR"]) == []
    assert sorted(os.listdir(results)) == [out.name]  # no staging folder left
    assert changes(before, snapshot(*watched)) == []
