"""Run one job in its own fresh Python process, with a timeout and a memory cap; never die with it, never
outlive it.

Each job runs as ``python -m executors._worker JOB_DIR`` (a fresh interpreter, i.e. "spawn": nothing
is inherited from the parent's torch state, and the child's peak memory is its own). The parent:

- writes ``JOB_DIR/request.json`` (the importable function ``module:qualname`` and its JSON request);
- polls the child every ``poll_s`` with ``os.wait4(pid, WNOHANG)`` and reads its ``VmRSS``;
- takes the child's peak RSS from the child itself (its ``VmHWM`` at exit, in ``result.json``), or,
  when it died without reporting, the highest ``VmRSS`` the polls saw. Not ``wait4``'s
  ``ru_maxrss``: Linux carries the pre-``exec`` high-water mark into it, i.e. the RSS of the parent
  that forked it (measured: 698 MB for a 30 MB child of a pytest process holding models), and a
  child's ``clear_refs`` reset lowers it too;
- enforces the **timeout** (wall clock from spawn, imports included) and the **memory cap**: the
  child's ``VmRSS`` is read from ``/proc/<pid>/status`` on every poll and the child is killed
  (SIGKILL) once it exceeds the cap. This is cgroup-free and needs no privileges. It caps resident
  memory, which is what the runs measure; ``RLIMIT_AS`` was not used because torch reserves far more
  address space than it touches (MiniLM: 1.4 GB virtual for 0.5 GB resident), so an address-space
  cap would either fail healthy runs or not bind. An allocation that grows faster than the poll
  interval can overshoot the cap by what it allocates in ``poll_s``; the kernel's OOM killer stays the
  last resort and kills only the child.

The child never outlives the parent. It runs in its own process group (``start_new_session``), and
the parent kills the whole group (SIGKILL) on a timeout, a cap, an exception or an interruption;
SIGTERM, SIGHUP and SIGINT delivered to the parent while it waits become :class:`Interrupted` (when it
waits in the main thread), so the group is killed before the parent exits. A parent killed with
SIGKILL cannot clean up: the child asked the kernel to kill it when its parent dies
(``prctl(PR_SET_PDEATHSIG, SIGKILL)`` in :mod:`executors._worker`, Linux; elsewhere the group kill on
the paths above is all there is).

The child writes ``progress.json`` when a phase starts and ``result.json`` at the end (atomic
renames). A crash (signal), ``os._exit``, an uncaught exception, the timeout or the cap gives an
:class:`IsolatedOutcome` with ``status="failed"`` and the reason, the last phase reached and the tail
of stderr; the parent carries on.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planner.errors import InvalidRequestError

REQUEST_FILE = "request.json"
RESULT_FILE = "result.json"
PROGRESS_FILE = "progress.json"
STDERR_FILE = "stderr.log"
STDOUT_FILE = "stdout.log"
WORKER_FILE = "worker.json"
PHASE_CHECK_S = 0.25
DEFAULT_POLL_S = 0.02
STDERR_TAIL_CHARS = 2000


@dataclass
class IsolatedOutcome:
    status: str  # "ok" or "failed"
    reason: str | None
    payload: dict[str, Any] | None
    exit_code: int | None
    signal: str | None
    max_rss_bytes: int | None  # the child's own VmHWM at exit, else the highest polled VmRSS
    wall_seconds: float
    last_phase: str | None
    job_dir: str
    stderr_tail: str = ""
    killed_by: str | None = None  # "timeout" or "memory-cap"
    extra: dict[str, Any] = field(default_factory=dict)


def write_json_atomic(path: Path, payload: Any) -> None:
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temporary.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(temporary, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _child_rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _child_env() -> dict[str, str]:
    """The parent's environment, plus its sys.path as PYTHONPATH so the child imports what the parent
    can (the project, test helpers, a user's evaluator module)."""
    env = dict(os.environ)
    paths = [p for p in sys.path if p and Path(p).exists()]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _stderr_tail(job_dir: Path) -> str:
    try:
        text = (job_dir / STDERR_FILE).read_text(errors="replace")
    except OSError:
        return ""
    return text[-STDERR_TAIL_CHARS:]


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class Interrupted(KeyboardInterrupt):
    """The parent received ``signum`` (SIGTERM, SIGHUP or SIGINT) while it waited for an isolated job; the
    job's process group was killed first. A KeyboardInterrupt (code that stops on Ctrl-C stops on it
    too): it ends the caller's work, it is not a failed candidate."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {_signal_name(signum)}")
        self.signum = signum

    @property
    def signal_name(self) -> str:
        return _signal_name(self.signum)


INTERRUPT_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """While waiting: SIGTERM / SIGHUP / SIGINT raise :class:`Interrupted` (main thread only: Python
    delivers signals there; in another thread the previous handlers stay and the child's
    PR_SET_PDEATHSIG is what ends it if the process dies)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise Interrupted(signum)

    previous = {number: signal.signal(number, handler) for number in INTERRUPT_SIGNALS}
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


def _kill_group(pid: int, *, group_only: bool = False) -> None:
    """SIGKILL the child's process group (the child and anything it started), then the child itself
    (``group_only`` once the child is reaped: its pid may be reused, its group id not while in use)."""
    kills = ((os.killpg, pid),) if group_only else ((os.killpg, pid), (os.kill, pid))
    for kill, target in kills:
        try:
            kill(target, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def positive_finite(value: float | None, label: str, unit: str, none_means: str) -> None:
    """``value`` is None or a positive finite number; else one InvalidRequestError naming ``label``."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise InvalidRequestError(f"{label} must be a positive finite number of {unit}, got {value:g}; "
                                  f"{none_means}.")


def check_limits(timeout_s: float | None, memory_cap_bytes: float | None) -> None:
    """A timeout or memory cap must be a positive finite number (None = no limit)."""
    positive_finite(timeout_s, "timeout_s", "seconds", "pass None for no timeout")
    positive_finite(memory_cap_bytes, "the memory cap", "bytes", "pass None for no cap")


PhaseCallback = Callable[[str, float], None]


def run_isolated(function: str, request: dict[str, Any], job_dir: str | os.PathLike, *,
                 timeout_s: float | None = None, memory_cap_bytes: int | None = None,
                 poll_s: float = DEFAULT_POLL_S, on_phase: PhaseCallback | None = None) -> IsolatedOutcome:
    """Run ``function(request, progress)`` (``module:qualname``) in a fresh process; see the module doc.

    ``progress(phase)`` is a callable the function may call when it starts a phase. The function returns
    a JSON-able dict, which becomes ``payload``. ``job_dir`` is created and keeps request, progress,
    result and logs (``worker.json`` names the child's pid). ``on_phase(phase, seconds)`` is called in
    this process when the child reports a new phase (progress display). Raises :class:`Interrupted`
    when this process is told to stop while it waits (the child is killed first).
    """
    check_limits(timeout_s, memory_cap_bytes)
    job = Path(job_dir)
    job.mkdir(parents=True, exist_ok=True)
    for name in (RESULT_FILE, PROGRESS_FILE):
        (job / name).unlink(missing_ok=True)
    write_json_atomic(job / REQUEST_FILE, {"function": function, "request": request})

    start = time.monotonic()
    killed_by = None
    peak_seen = 0
    with _signals_interrupt():
        with open(job / STDOUT_FILE, "wb") as stdout, open(job / STDERR_FILE, "wb") as stderr:
            child = subprocess.Popen([sys.executable, "-m", "executors._worker", str(job), str(os.getpid())],
                                     stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, env=_child_env(),
                                     close_fds=True, start_new_session=True)
        try:
            write_json_atomic(job / WORKER_FILE, {"pid": child.pid, "parent_pid": os.getpid()})
            phase_seen, next_phase_check = None, 0.0
            while True:
                pid, status, _ = os.wait4(child.pid, os.WNOHANG)
                if pid == child.pid:
                    break
                elapsed = time.monotonic() - start
                rss = _child_rss_bytes(child.pid) or 0
                peak_seen = max(peak_seen, rss)
                if timeout_s is not None and elapsed > timeout_s:
                    killed_by = "timeout"
                elif memory_cap_bytes is not None and rss > memory_cap_bytes:
                    killed_by = "memory-cap"
                if killed_by:
                    _kill_group(child.pid)
                    pid, status, _ = os.wait4(child.pid, 0)
                    break
                if on_phase is not None and elapsed >= next_phase_check:
                    next_phase_check = elapsed + PHASE_CHECK_S
                    phase = (_read_json(job / PROGRESS_FILE) or {}).get("phase")
                    if phase and phase != phase_seen:
                        phase_seen = phase
                        on_phase(phase, elapsed)
                time.sleep(poll_s)
        except BaseException:
            # The parent is interrupted or failed: do not leave the child (or its children) running.
            _kill_group(child.pid)
            try:
                os.wait4(child.pid, 0)
            except ChildProcessError:
                pass
            raise
        finally:
            _kill_group(child.pid, group_only=True)  # the child's own children, if it left any behind
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4; keep Popen consistent
    wall = time.monotonic() - start
    exit_code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    signal_name = _signal_name(os.WTERMSIG(status)) if os.WIFSIGNALED(status) else None
    progress = _read_json(job / PROGRESS_FILE) or {}
    last_phase = progress.get("phase")
    result = _read_json(job / RESULT_FILE)
    max_rss = (result or {}).get("peak_rss_bytes") or peak_seen or None
    outcome = IsolatedOutcome(status="failed", reason=None, payload=None, exit_code=exit_code, signal=signal_name,
                              max_rss_bytes=max_rss, wall_seconds=wall, last_phase=last_phase, job_dir=str(job),
                              stderr_tail=_stderr_tail(job), killed_by=killed_by)
    where = f" during phase {last_phase!r}" if last_phase else ""
    if killed_by == "timeout":
        outcome.reason = f"timed out after {timeout_s:g} s{where} (killed)"
    elif killed_by == "memory-cap":
        outcome.reason = (f"memory cap exceeded: resident memory passed {memory_cap_bytes / 2**20:,.0f} MiB"
                          f"{where} (polled peak {max_rss / 2**20:,.0f} MiB); killed")
    elif result is not None and result.get("status") == "ok":
        outcome.status = "ok"
        outcome.payload = result.get("payload")
    elif result is not None:
        outcome.reason = result.get("reason") or "the job failed without a reason"
        outcome.payload = result.get("payload")
    elif signal_name is not None:
        hint = " (likely the kernel's out-of-memory killer)" if signal_name == "SIGKILL" else ""
        outcome.reason = f"crashed: the process was killed by {signal_name}{hint}{where}"
    else:
        outcome.reason = f"crashed: the process exited with code {exit_code} without a result{where}"
    return outcome
