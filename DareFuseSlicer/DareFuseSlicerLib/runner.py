"""The scene process's side of the inference process (worker.py): start it, hand it jobs, read what it says,
end it. No torch here, and no thread: everything is polled from the caller's (main) thread.

Why a process: Slicer's Python (PythonQt) runs without thread support, so its main thread holds the GIL while Qt
waits for events; a Python worker thread then crawls, filters that hold the GIL freeze the GUI, a running filter
cannot be cancelled and memory is never handed back. A child process has none of these problems; SlicerMONAIAuto3DSeg
and SlicerTotalSegmentator do the same.

- Worker: one inference process (PythonSlicer in Slicer, sys.executable headless), in a session of its own so
  that ending it also ends what PythonSlicer (a launcher) started. Its stderr goes to worker.log in its private
  folder. Its stdout is read without blocking (non-blocking pipe reads; a reader thread that only splits lines
  where the OS cannot read a pipe without blocking, i.e. Windows before Python 3.12).
- WorkerPool: keeps one idle worker warm between runs (the model stays loaded: later runs cost only the case's
  own work); a worker idle longer than its timeout leaves by itself. POOL is the process's pool.
- Run: one job. Its inputs are written to a private temporary folder, the results come back in it as files
  (exchange.py), the folder is removed when the run is finished or cancelled. Cancel kills the worker (within
  STOP_WAIT_S seconds twice: terminate, then kill); a worker that dies is a WorkerError; the scene is only
  touched by finish(), on the caller's thread.
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
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional

import SimpleITK as sitk

from . import errors, exchange
from .errors import Cancelled, WorkerError
from .progress import CancelFn, ProgressFn, format_time_left

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


class WorkerBug(RuntimeError):
    """An unexpected exception in the inference process (a bug); `details` holds its traceback there."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


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
#: Run folders not yet removed (a run never finished nor cancelled): removed when this process exits.
_OPEN_FOLDERS: set = set()


def _at_exit() -> None:
    POOL.shutdown()
    for folder in list(_OPEN_FOLDERS):
        shutil.rmtree(folder, ignore_errors=True)


atexit.register(_at_exit)


def error_from(message: Mapping[str, Any]) -> BaseException:
    """The exception the worker reported, rebuilt: a user error by its class, anything else a WorkerBug."""
    kind = message.get("kind")
    text = message.get("message", "")
    if kind == "OptionError":
        return errors.OptionError(message["template"], **message.get("wording", {}))
    if kind in ("InputError", "Cancelled", "DareFuseError", "WorkerError"):
        return getattr(errors, kind)(text)
    return WorkerBug(f"The inference failed: {text}", message.get("traceback", ""))


class Run:
    """One run in the inference process, polled from the main thread.

    `fraction` (0..1), `stage` and `time_left` say how far it is; `done` once it has ended (results ready,
    failed, or cancelled); cancel() stops it at once; finish() (main thread) adds the results through `commit`
    and returns what it returns, or raises the run's error. Reading any of these reads the worker's output.
    """

    def __init__(self, images: Mapping[str, sitk.Image], job: Mapping[str, Any],
                 commit: Callable[[Any, dict, Optional[ProgressFn]], Any], pool: Optional[WorkerPool] = None,
                 share: float = 1.0):
        self.pool = pool or POOL
        self._commit = commit
        self.share = share  # the part of the progress bar before finish() (which adds the nodes)
        self.started = time.monotonic()
        self._fraction, self._stage = 0.0, "starting the inference process"
        self._outcome: Optional[tuple] = None
        self._finished = False
        self._worker_pid: Optional[int] = None
        self.id = uuid.uuid4().hex
        self.folder = Path(tempfile.mkdtemp(prefix="darefuse-run-"))
        _OPEN_FOLDERS.add(self.folder)
        self.worker: Optional[Worker] = None
        try:
            self.worker = self.pool.take()  # a new one starts importing while the inputs are written
            if self.worker.jobs_taken == 1:
                self._stage = "starting the inference process (loading PyTorch and the model)"
            files = exchange.write_images(images, self.folder)
            self.worker.send({"type": "job", "id": self.id, "folder": str(self.folder), "inputs": files, **job})
        except BaseException:
            self._close(kill=True)
            raise

    # -- what the widget polls ---------------------------------------------------------------------------------
    @property
    def fraction(self) -> float:
        self._pump()
        return self._fraction

    @property
    def stage(self) -> str:
        self._pump()
        return self._stage

    @property
    def time_left(self) -> str:
        return format_time_left(time.monotonic() - self.started, self.fraction)

    @property
    def done(self) -> bool:
        self._pump()
        return self._outcome is not None

    @property
    def worker_pid(self) -> Optional[int]:
        """The inference process's own process id, once it has said it (a warm worker keeps its id)."""
        self._pump()
        return self._worker_pid

    def _pump(self) -> None:
        worker = self.worker
        if self._outcome is not None or worker is None:
            return
        messages = worker.receive()
        self._worker_pid = worker.pid
        for message in messages:
            kind = message.get("type")
            if message.get("id") not in (None, self.id):
                continue
            if kind == "progress":
                self._fraction = self.share * float(message.get("fraction", 0.0))
                self._stage = message.get("stage", self._stage)
            elif kind in ("result", "error"):
                self._outcome = (kind, message)
                self.pool.give_back(worker)  # healthy: warm for the next run
                self.worker = None
                return
            elif kind == "fatal":
                self._fail(WorkerError(f"The inference process could not start: {message.get('message')}",
                                       message.get("traceback", "") or worker.log_tail()))
                return
        if not worker.alive:
            try:
                worker.process.wait(STOP_WAIT_S)  # its output closed: it is exiting, let its status arrive
            except subprocess.TimeoutExpired:
                pass
            self._fail(WorkerError(
                f"The inference process {worker.describe_exit()} before the run ended (out of memory, or "
                "killed); nothing was added to the scene.", worker.log_tail()))

    def _fail(self, error: BaseException) -> None:
        self._outcome = ("failed", error)
        if self.worker is not None:
            self.pool.discard(self.worker)
            self.worker = None

    # -- control -----------------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the run now: the worker is ended (at most 2 x STOP_WAIT_S); finish() then raises Cancelled."""
        if self._finished:
            return
        if self._outcome is None or self._outcome[0] != "failed":
            self._outcome = ("cancelled", None)
        if self.worker is not None:
            self.pool.discard(self.worker)
            self.worker = None
        self._remove_folder()

    def _remove_folder(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        _OPEN_FOLDERS.discard(self.folder)

    def wait(self, timeout: Optional[float] = None, progress: Optional[ProgressFn] = None,
             cancel: Optional[CancelFn] = None) -> bool:
        """Block until done (or `timeout` seconds), calling progress(fraction, stage) as they change and
        honouring cancel(). For scripts and tests; the widget polls instead. Returns `done`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        shown = None
        try:
            while not self.done:
                if progress is not None and (self._fraction, self._stage) != shown:
                    shown = (self._fraction, self._stage)
                    progress(*shown)
                if cancel is not None and cancel():
                    self.cancel()
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                if self.worker is not None:
                    self.worker.reader.wait(0.2 if deadline is None else min(0.2, deadline - time.monotonic()))
        except BaseException:  # Ctrl-C while waiting: the worker must not outlive this
            self.cancel()
            raise
        return True

    def finish(self, progress: Optional[ProgressFn] = None) -> Any:
        """Main thread, once done: read the results and add them (commit), or raise the run's error."""
        if self._finished:
            raise RuntimeError("this run has already been finished")
        if not self.done:
            raise RuntimeError("the run has not ended yet; poll `done` first")
        self._finished = True
        try:
            kind, payload = self._outcome
            if kind == "cancelled":
                raise Cancelled()
            if kind == "failed":
                raise payload
            if kind == "error":
                raise error_from(payload)
            self._fraction, self._stage = self.share, "reading the results"
            result = exchange.load(self.folder / "result")
            return self._commit(result, payload.get("model") or {}, progress)
        finally:
            self._close()

    def _close(self, kill: bool = False) -> None:
        if self.worker is not None:
            (self.pool.discard if kill else self.pool.give_back)(self.worker)
            self.worker = None
        self._remove_folder()


class LocalRun:
    """A run computed in this process (DareFuseLogic with in_process=True): done at once, same interface."""

    def __init__(self, result: Any, model_info: dict, commit: Callable[[Any, dict, Optional[ProgressFn]], Any],
                 share: float = 1.0):
        self._result, self._model_info, self._commit = result, model_info, commit
        self.fraction, self.stage, self.time_left, self.done = share, "done", "", True
        self.worker_pid = os.getpid()
        self._cancelled = self._finished = False

    def cancel(self) -> None:
        self._cancelled = True

    def wait(self, timeout: Optional[float] = None, progress: Optional[ProgressFn] = None,
             cancel: Optional[CancelFn] = None) -> bool:
        return True

    def finish(self, progress: Optional[ProgressFn] = None) -> Any:
        if self._finished:
            raise RuntimeError("this run has already been finished")
        self._finished = True
        if self._cancelled:
            raise Cancelled()
        return self._commit(self._result, self._model_info, progress)
