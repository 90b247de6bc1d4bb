"""Entry point of an isolated job: ``python -m executors._worker JOB_DIR [PARENT_PID]`` (see executors.isolation).

First asks the kernel to SIGKILL this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``,
Linux), and exits at once when the parent ``PARENT_PID`` is already gone, so a parent killed with
SIGKILL never leaves a worker running without its timeout and memory cap. Then reads
``request.json``, imports the named function, calls ``function(request, progress)`` and writes
``result.json`` = ``{"status": "ok", "payload": ...}`` or ``{"status": "failed", "reason": ...}``, both
with ``peak_rss_bytes`` = this process's VmHWM at the end (since its last reset, if it reset it).
Imports nothing heavy itself: the job decides what it needs (and measures it).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
EXIT_PARENT_GONE = 75


def die_with_parent(parent_pid: int | None) -> bool:
    """Have the kernel SIGKILL this process when its parent exits; False where prctl is unavailable.
    Exits (code 75) when the parent died before the request was made (the child was already orphaned)."""
    armed = False
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(EXIT_PARENT_GONE)
    return armed


def main(job_dir: str, parent_pid: int | None = None) -> int:
    die_with_parent(parent_pid)
    from executors.evaluate.custom import import_function
    from executors.isolation import PROGRESS_FILE, REQUEST_FILE, RESULT_FILE, write_json_atomic
    from executors.measure import read_status_bytes

    def peak() -> int | None:
        return read_status_bytes(("VmHWM",)).get("VmHWM")

    job = Path(job_dir)
    spec = json.loads((job / REQUEST_FILE).read_text())
    start = time.monotonic()

    def progress(phase: str) -> None:
        write_json_atomic(job / PROGRESS_FILE, {"phase": phase, "seconds": time.monotonic() - start})

    try:
        function = import_function(spec["function"])
        payload = function(spec["request"], progress)
    except MemoryError as error:
        write_json_atomic(job / RESULT_FILE, {"status": "failed", "reason": f"out of memory: {error}".strip(),
                                              "traceback": traceback.format_exc(), "peak_rss_bytes": peak()})
        return 1
    except Exception as error:  # the job's failure is reported, not raised: the parent carries on
        reason = f"{type(error).__name__}: {error}"
        if "can't allocate memory" in str(error) or "out of memory" in str(error).lower():
            reason = f"out of memory: {reason}"
        write_json_atomic(job / RESULT_FILE, {"status": "failed", "reason": reason,
                                              "traceback": traceback.format_exc(), "peak_rss_bytes": peak()})
        traceback.print_exc()
        return 1
    write_json_atomic(job / RESULT_FILE, {"status": "ok", "payload": payload, "peak_rss_bytes": peak()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else None))
