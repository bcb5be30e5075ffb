"""The inference process: torch, MONAI and pytorch-grad-cam live here, never in the process that holds the scene.

    python -m DareFuseSlicerLib.worker --home DIR [--idle-timeout SECONDS]

workerpool.py starts it (PythonSlicer inside Slicer, sys.executable headless) and speaks JSON lines with it:

- on stdin, jobs: {"type": "job", "id", "folder", "inputs": {contrast: file}, "model_path", "run_options":
  pipeline.run.run's keyword arguments (logic.run_options)} and {"type": "quit"};
- on stdout: {"type": "ready", "pid"} once, then per job {"type": "progress", "id", "fraction", "stage"} and
  finally {"type": "result", "id", "model"} (the PipelineResult written by exchange.save into
  <folder>/result) or {"type": "error", "id", "kind", "message", ...}; {"type": "fatal", ...} if it cannot
  start (torch missing, ...), {"type": "exit", "reason": "idle"} when it leaves after the idle time.

It stays warm: the imports and each model are loaded once and serve every later job. It ends on "quit", after
the idle time without a job, and when its stdin closes (the scene process closed it, or died): during a job it
then removes the job's folder, which nobody else will, and leaves at once. Cancel is not a message: the scene
process kills it (a running filter cannot be interrupted from Python).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import queue
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Dict, Optional

from . import exchange
from .errors import DareFuseError, OptionError, WorkerError

#: Seconds without a job after which the process leaves (workerpool.py passes its setting).
DEFAULT_IDLE_TIMEOUT_S = 600.0
#: A progress line is sent when the stage changes or the fraction has grown by this much.
PROGRESS_STEP = 0.005


class Channel:
    """Protocol lines on the process's original stdout. Anything else printed, by us or by a library, goes to
    stderr (the log), so that it cannot break a line of the protocol."""

    def __init__(self):
        self._out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        self._lock = threading.Lock()

    def send(self, **message: Any) -> None:
        with self._lock:
            self._out.write(json.dumps(message, default=str) + "\n")
            self._out.flush()


class State:
    """What the stdin reader must clean up if the scene process goes away."""

    def __init__(self, home: Optional[Path]):
        self.home = home
        self.job_folder: Optional[Path] = None

    def remove_files(self) -> None:
        for folder in (self.job_folder, self.home):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)


def read_stdin(inbox: "queue.Queue[Optional[dict]]", state: State) -> None:
    """Reads job lines into `inbox`; at end of input (the scene process closed our stdin or died) it ends the
    process at once if a job is running, else lets the main loop finish."""
    for line in sys.stdin.buffer:
        try:
            inbox.put(json.loads(line))
        except ValueError:
            print(f"darefuse worker: ignored a line that is not JSON: {line[:200]!r}", file=sys.stderr)
    if state.job_folder is not None:
        state.remove_files()
        os._exit(0)
    inbox.put(None)


class Progress:
    """progress(fraction, stage) for the pipeline, sent as lines, thinned to what a progress bar can show."""

    def __init__(self, channel: Channel, job_id: str):
        self.channel, self.job_id = channel, job_id
        self.fraction, self.stage = -1.0, None

    def __call__(self, fraction: float, stage: str) -> None:
        if stage == self.stage and fraction < self.fraction + PROGRESS_STEP:
            return
        self.fraction, self.stage = fraction, stage
        self.channel.send(type="progress", id=self.job_id, fraction=round(float(fraction), 4), stage=stage)


def describe_error(error: BaseException) -> Dict[str, Any]:
    """An exception as the scene process rebuilds it: a user error by its class, anything else as a bug."""
    if isinstance(error, DareFuseError):
        described: Dict[str, Any] = {"kind": type(error).__name__, "message": str(error)}
        if isinstance(error, OptionError):
            described.update(template=error.template, wording=error.wording)
        return described
    return {"kind": "bug", "message": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}


class Jobs:
    """Runs jobs with the models it has loaded (one per model file, kept for later jobs)."""

    def __init__(self, channel: Channel, state: State):
        self.channel, self.state = channel, state
        self.models: Dict[str, Any] = {}
        self.done = 0  # jobs run so far

    def model(self, path: str):
        if path not in self.models:
            from .network.store import load_model

            self.models[path] = load_model(path, device="cpu")  # the pipeline moves it to the run's device
        return self.models[path]

    def run(self, job: Dict[str, Any]) -> None:
        job_id = job["id"]
        folder = Path(job["folder"])
        self.state.job_folder = folder
        try:
            progress = Progress(self.channel, job_id)
            progress(0.0, "loading the model")
            model = self.model(job["model_path"])
            from .pipeline.outputs import describe_model
            from .pipeline.run import run

            images = exchange.read_images(job["inputs"], folder)
            result = run(images, model, progress=progress, **job["run_options"])
            del images
            if self.done:  # "process start to the first window" is start-up only in a fresh process
                result.timings.pop("first_window_s", None)
            progress(1.0, "sending the results")
            try:
                exchange.save(result, folder / "result")
            except (OSError, RuntimeError) as error:  # RuntimeError: ITK's writer (e.g. a full disk)
                raise WorkerError(f"The results could not be written to the temporary folder {folder.parent} "
                                  f"({error}); nothing was added. Free some disk space there.") from None
            self.channel.send(type="result", id=job_id, model=describe_model(model))
        except Exception as error:  # noqa: BLE001 - every error goes back to the scene process, typed
            self.channel.send(type="error", id=job_id, **describe_error(error))
        finally:
            self.state.job_folder = None
            self.done += 1
            gc.collect()


def preload() -> None:
    """torch, MONAI and the pipeline, imported while the scene process writes the first job's inputs."""
    from .pipeline import outputs, run  # noqa: F401
    from .network import store  # noqa: F401


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m DareFuseSlicerLib.worker")
    parser.add_argument("--home", default=None, help="this process's private folder (removed when it leaves)")
    parser.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT_S,
                        help="seconds without a job before it leaves")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    channel = Channel()
    state = State(Path(args.home) if args.home else None)
    inbox: "queue.Queue[Optional[dict]]" = queue.Queue()
    threading.Thread(target=read_stdin, args=(inbox, state), name="stdin", daemon=True).start()
    channel.send(type="ready", pid=os.getpid())
    from .pipeline.process_stats import unmap_large_blocks

    unmap_large_blocks()  # freed image buffers go back to the system between jobs
    try:
        preload()
    except Exception as error:  # noqa: BLE001 - e.g. torch missing: said once, then the process leaves
        channel.send(type="fatal", **describe_error(error))
        leave(state, 3)
    jobs = Jobs(channel, state)
    idle_since = time.monotonic()
    while True:
        try:
            message = inbox.get(timeout=max(0.0, args.idle_timeout - (time.monotonic() - idle_since)))
        except queue.Empty:
            channel.send(type="exit", reason="idle")
            break
        if message is None or message.get("type") == "quit":
            break
        if message.get("type") == "job":
            jobs.run(message)
            idle_since = time.monotonic()
    leave(state, 0)
    return 0


def leave(state: State, code: int) -> None:
    """Remove our files and end the process now: a normal interpreter shutdown would abort while the stdin
    thread is blocked reading (daemon threads cannot be stopped), and there is nothing left to tidy up."""
    state.remove_files()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
