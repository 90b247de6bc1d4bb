"""Helpers of the executor tests: jobs and evaluators the isolated child imports by name, shared models."""

from __future__ import annotations

import os
import time


def echo(request, progress):
    progress("echo")
    return {"echo": request["value"], "pid": os.getpid()}


def abort(request, progress):
    progress("about-to-crash")
    os.abort()


def exit_without_result(request, progress):
    os._exit(3)


def raise_error(request, progress):
    progress("raising")
    raise RuntimeError("deliberate failure")


def kill_self(request, progress):
    """Die by SIGKILL, as a process the kernel's out-of-memory killer chose."""
    import signal

    progress("about-to-be-killed")
    os.kill(os.getpid(), signal.SIGKILL)


def sleep(request, progress):
    progress("sleeping")
    time.sleep(request["seconds"])
    return {"slept": request["seconds"]}


def hog_memory(request, progress):
    """Touch memory in 16 MiB steps (about 0.8 GB/s) until ``mib`` MiB are resident."""
    progress("allocating")
    chunks = []
    for _ in range(request["mib"] // 16):
        chunks.append(bytearray(16 * 2**20))  # bytearray zero-fills: the pages are resident
        time.sleep(0.02)
    return {"allocated_mib": len(chunks) * 16}


# -- evaluators sent to isolated candidates (module-level, so the child can import them) -------------
def count_bnb_modules(model, tokenizer):
    """1 + the number of bitsandbytes Linear modules (a deterministic, model-dependent score)."""
    return 1.0 + sum(1 for m in model.modules() if type(m).__name__ in ("Linear4bit", "Linear8bitLt"))


def crash_when_quantized(model, tokenizer):
    """Scores the baseline, kills the process (SIGABRT) on a quantized model: a crashing candidate."""
    if count_bnb_modules(model, tokenizer) > 1:
        os.abort()
    return 1.0


# -- shared models (built at most once per test process) -----------------------------------------------
_TINY = {}


def tiny_llm_dir():
    """The tiny causal LM fixture at the test step count, from the user cache (built on first use)."""
    if "info" not in _TINY:
        from executors.fixtures import ensure_test_llm

        _TINY["info"] = ensure_test_llm()
    return _TINY["info"]
