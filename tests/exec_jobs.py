"""Jobs for the isolated-runner tests: importable functions the child process runs (no torch)."""

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


def sleep(request, progress):
    progress("sleeping")
    time.sleep(request["seconds"])
    return {"slept": request["seconds"]}


def hog_memory(request, progress):
    """Touch memory in 16 MiB steps until ``mib`` MiB are resident."""
    progress("allocating")
    chunks = []
    for _ in range(request["mib"] // 16):
        chunks.append(bytearray(16 * 2**20))  # bytearray zero-fills: the pages are resident
        time.sleep(0.005)
    return {"allocated_mib": len(chunks) * 16}
