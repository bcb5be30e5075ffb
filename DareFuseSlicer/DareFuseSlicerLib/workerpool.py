"""The inference processes (worker.py) seen from the scene process: start one, talk to it, end it.

- Worker: one inference process (PythonSlicer in Slicer, sys.executable headless), in a session of its own so
  that ending it also ends what PythonSlicer (a launcher) started. Its stderr goes to worker.log in its private
  folder. Its stdout is read without blocking (non-blocking pipe reads; a reader thread that only splits lines
  where the OS cannot read a pipe without blocking, i.e. Windows before Python 3.12), so that nothing here
  needs a thread in Slicer, whose Python has no thread support (the main thread keeps the GIL).
- WorkerPool: keeps one idle worker warm between runs (the model stays loaded: later runs cost only the case's
  own work); a worker idle longer than its timeout leaves by itself. POOL is the process's pool, shut down when
  the process exits.
No torch here: runner.py gives the workers their jobs.
"""
from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from .errors import WorkerError

#: Seconds a warm worker waits for the next run before it leaves (DAREFUSE_WORKER_IDLE_S overrides it).
IDLE_TIMEOUT_S = float(os.environ.get("DAREFUSE_WORKER_IDLE_S", "600"))
#: A worker this close to its idle timeout is replaced rather than given a job it might leave before reading.
IDLE_MARGIN_S = 10.0
#: Seconds to wait after terminating a worker before killing it, and after killing it.
STOP_WAIT_S = 0.8
#: The folder that holds DareFuseSlicerLib: the worker imports the same library as the scene process.
LIB_PARENT = Path(__file__).resolve().parents[1]
_BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
              "from DareFuseSlicerLib.worker import main; sys.exit(main(sys.argv[1:]))")

def interpreter() -> str:
    """The Python that runs the worker: PythonSlicer inside the Slicer application (its own Python with
    Slicer's packages, as slicer.util runs pip), else this process's interpreter."""
    slicer = sys.modules.get("slicer")
    if slicer is not None and hasattr(slicer, "app"):
        found = shutil.which("PythonSlicer")
        if found:
            return found
        beside = Path(sys.executable).with_name("PythonSlicer" + (".exe" if os.name == "nt" else ""))
        if beside.is_file():
            return str(beside)
        raise WorkerError("Cannot find Slicer's PythonSlicer to run the inference; reinstall Slicer.")
    return sys.executable


def worker_command(python: str, idle_timeout_s: float, home: Path) -> List[str]:
    return [python, "-c", _BOOTSTRAP, str(LIB_PARENT), "--home", str(home), "--idle-timeout", str(idle_timeout_s)]


class LineReader:
    """Complete lines from a pipe, without blocking the caller."""

    def __init__(self, pipe, use_thread: bool = False):
        self._pipe = pipe
        self._buffer = b""
        self.eof = False
        self._queue: Optional[List[bytes]] = None
        self._lock = threading.Lock()
        if not use_thread:
            try:
                os.set_blocking(pipe.fileno(), False)
            except (AttributeError, OSError, ValueError):
                use_thread = True
        if use_thread:  # the thread only reads and splits; it never touches the scene
            self._queue = []
            threading.Thread(target=self._read_in_thread, name="DareFuse worker output", daemon=True).start()

    def _read_in_thread(self) -> None:
        for line in iter(self._pipe.readline, b""):
            with self._lock:
                self._queue.append(line)
        with self._lock:
            self.eof = True

    def lines(self) -> List[bytes]:
        if self._queue is not None:
            with self._lock:
                taken, self._queue[:] = list(self._queue), []
            return [line.rstrip(b"\r\n") for line in taken]
        while not self.eof:
            try:
                chunk = os.read(self._pipe.fileno(), 1 << 16)
            except (BlockingIOError, InterruptedError):
                break
            except (OSError, ValueError):  # closed: the worker was ended
                chunk = b""
            if not chunk:
                self.eof = True
                break
            self._buffer += chunk
        *complete, self._buffer = self._buffer.split(b"\n")
        if self.eof and self._buffer:
            complete.append(self._buffer)
            self._buffer = b""
        return [line.rstrip(b"\r") for line in complete]

    def wait(self, timeout: float) -> None:
        """Until something may be readable, or `timeout` seconds."""
        if self._queue is None and os.name == "posix" and not self.eof and not self._pipe.closed:
            import select

            select.select([self._pipe], [], [], max(timeout, 0.0))
        else:
            time.sleep(min(max(timeout, 0.0), 0.05))


def _session_options() -> Dict[str, Any]:
    if os.name == "posix":
        return {"start_new_session": True}
    return {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
            | getattr(subprocess, "CREATE_NO_WINDOW", 0)}


def _end_process_tree(process: subprocess.Popen, wait_s: float = STOP_WAIT_S) -> None:
    """Terminate, then kill, the worker and whatever it started (PythonSlicer runs Python as its child)."""
    if process.returncode is not None:
        return  # ended and reaped before: its id may be another process's by now, so no signal
    if os.name == "posix":
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)  # its own session: the group is the worker and what it started
            except (ProcessLookupError, PermissionError):
                pass
            try:
                process.wait(wait_s)
            except subprocess.TimeoutExpired:
                pass
    else:
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(process.pid)], capture_output=True)
        try:
            process.wait(2 * wait_s)
        except subprocess.TimeoutExpired:
            process.kill()


class Worker:
    """One inference process."""

    def __init__(self, idle_timeout_s: float = IDLE_TIMEOUT_S):
        self.idle_timeout_s = idle_timeout_s
        python = interpreter()  # before the folder is made: raises WorkerError where there is none
        self.home = Path(tempfile.mkdtemp(prefix="darefuse-worker-"))
        self.log_path = self.home / "worker.log"
        env = dict(os.environ)
        # torch makes its compile cache folder when imported; a private one goes away with the worker's folder.
        env.setdefault("TORCHINDUCTOR_CACHE_DIR", str(self.home / "torchinductor"))
        try:
            with open(self.log_path, "wb") as log:
                self.process = subprocess.Popen(
                    worker_command(python, idle_timeout_s, self.home), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=log, cwd=str(self.home), env=env, close_fds=True, **_session_options())
        except OSError as error:
            shutil.rmtree(self.home, ignore_errors=True)
            raise WorkerError(f"The inference process could not be started: {error}") from None
        self.reader = LineReader(self.process.stdout)
        self.pid: Optional[int] = None  # the interpreter's own (PythonSlicer, a launcher, has another)
        self.idle_since = time.monotonic()
        self.exit_reason = ""
        self.jobs_taken = 0

    @property
    def alive(self) -> bool:
        return self.process.poll() is None and not self.reader.eof

    def idle_for(self) -> float:
        return time.monotonic() - self.idle_since

    def has_left(self) -> bool:
        """Whether an idle worker has ended, or said that it leaves (its idle timeout)."""
        self.receive()
        return bool(self.exit_reason) or not self.alive

    def send(self, message: Mapping[str, Any]) -> None:
        try:
            self.process.stdin.write((json.dumps(message) + "\n").encode("utf-8"))
            self.process.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise WorkerError("The inference process ended before it could take the run; nothing was added. "
                              "Try again.", self.log_tail()) from None

    def receive(self) -> List[dict]:
        messages = []
        for line in self.reader.lines():
            try:
                message = json.loads(line)
            except ValueError:
                continue  # not ours: the worker sends every line of its own as JSON
            if message.get("type") == "ready":
                self.pid = message.get("pid")
            elif message.get("type") == "exit":
                self.exit_reason = message.get("reason", "")
            messages.append(message)
        return messages

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def describe_exit(self) -> str:
        code = self.process.poll()
        if code is None:
            return "closed its output"
        if code < 0:
            try:
                return f"was ended by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"was ended by signal {-code}"
        return f"exited with status {code}"

    def stop(self) -> None:
        """Ask it to leave; kill it if it does not, promptly. Its folder is removed."""
        if self.process.poll() is None:
            try:
                self.send({"type": "quit"})
                self.process.stdin.close()
                self.process.wait(STOP_WAIT_S)
            except (WorkerError, OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def kill(self) -> None:
        """End it now (terminate, then kill: at most 2 x STOP_WAIT_S) and remove its folder."""
        _end_process_tree(self.process)
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except (OSError, ValueError):
                pass
        shutil.rmtree(self.home, ignore_errors=True)


class WorkerPool:
    """At most one idle worker kept warm; a run takes it (or a new one) and gives it back when it is done."""

    def __init__(self, idle_timeout_s: Optional[float] = None):
        self.idle_timeout_s = IDLE_TIMEOUT_S if idle_timeout_s is None else idle_timeout_s
        self._idle: Optional[Worker] = None
        self._busy: List[Worker] = []

    def take(self) -> Worker:
        worker, self._idle = self._idle, None
        if worker is not None and (worker.has_left()
                                   or worker.idle_for() > worker.idle_timeout_s - IDLE_MARGIN_S):
            worker.kill()
            worker = None
        if worker is None:
            worker = Worker(self.idle_timeout_s)
        worker.jobs_taken += 1
        self._busy.append(worker)
        return worker

    def give_back(self, worker: Worker) -> None:
        if worker in self._busy:
            self._busy.remove(worker)
        if worker.alive and self._idle is None:
            worker.idle_since = time.monotonic()
            self._idle = worker
        else:
            worker.stop()

    def discard(self, worker: Worker) -> None:
        if worker in self._busy:
            self._busy.remove(worker)
        worker.kill()

    @property
    def idle_worker(self) -> Optional[Worker]:
        return self._idle

    def shutdown(self) -> None:
        """End every worker (the module is closed, or the process exits)."""
        busy, idle = self._busy, self._idle
        self._busy, self._idle = [], None
        for worker in busy:
            worker.kill()  # a run in progress: no time to wait for it
        if idle is not None:
            idle.stop()


POOL = WorkerPool()
atexit.register(POOL.shutdown)
