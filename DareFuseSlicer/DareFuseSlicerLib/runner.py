"""Runs in the inference process, as the scene process sees them: polled, cancelled and finished from its
main thread, with no thread of its own.

Why a process: Slicer's Python (PythonQt) runs without thread support, so its main thread holds the GIL while Qt
waits for events; a Python worker thread then crawls, filters that hold the GIL freeze the GUI, a running filter
cannot be cancelled and memory is never handed back. A child process has none of these problems;
SlicerMONAIAuto3DSeg and SlicerTotalSegmentator do the same.

Run: one job. Its inputs are written to a private temporary folder, the worker (workerpool.py) runs it and writes
the result there as files (exchange.py); the folder is removed when the run is finished or cancelled (or, at the
latest, when this process exits). Cancel ends the worker within 2 x workerpool.STOP_WAIT_S seconds (terminate,
then kill); a worker that dies is a WorkerError; the scene is only touched by finish(), on the caller's thread.
LocalRun: the same interface for a run computed in this process (DareFuseLogic(in_process=True)).
"""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import SimpleITK as sitk

from . import errors, exchange
from .errors import Cancelled, WorkerError
from .progress import CancelFn, ProgressFn, format_time_left
from .workerpool import POOL, STOP_WAIT_S, Worker, WorkerPool

#: Run folders not yet removed (a run never finished nor cancelled): removed when this process exits.
_OPEN_FOLDERS: set = set()


def _remove_open_folders() -> None:
    for folder in list(_OPEN_FOLDERS):
        shutil.rmtree(folder, ignore_errors=True)


atexit.register(_remove_open_folders)


class WorkerBug(RuntimeError):
    """An unexpected exception in the inference process (a bug); `details` holds its traceback there."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details

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
            try:
                files = exchange.write_images(images, self.folder)
            except (OSError, RuntimeError) as error:  # RuntimeError: ITK's writer (e.g. a full disk)
                raise WorkerError(f"The inputs could not be written to the temporary folder {self.folder.parent} "
                                  f"({error}); nothing was started. Free some disk space there.") from None
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
