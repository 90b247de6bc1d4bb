"""Measurement logic: per-phase CPU peaks from /proc, CUDA peaks (mocked GPU), sizes, timing."""

from __future__ import annotations

import sys

import pytest

from executors.measure import PhaseMeter, directory_bytes, read_status_bytes, reset_peak_rss, time_calls
from executors.result import compare

MIB = 2**20


class FakeCuda:
    """Records calls like torch.cuda; peaks are set by the test between reset and read."""

    def __init__(self):
        self.calls = []
        self.allocated = 0
        self.reserved = 0

    def synchronize(self):
        self.calls.append("sync")

    def reset_peak_memory_stats(self):
        self.calls.append("reset")
        self.allocated = self.reserved = 0

    def max_memory_allocated(self):
        return self.allocated

    def max_memory_reserved(self):
        return self.reserved


def _status_file(tmp_path, hwm_kib, rss_kib):
    path = tmp_path / "status"
    path.write_text(f"Name:\tpython\nVmPeak:\t 9999 kB\nVmHWM:\t {hwm_kib} kB\nVmRSS:\t {rss_kib} kB\n")
    return path


def test_cuda_peaks_are_reset_per_phase_and_read_at_its_end(tmp_path):
    cuda = FakeCuda()
    meter = PhaseMeter(cuda=cuda, status_path=_status_file(tmp_path, 2048, 1024),
                       clear_refs_path=tmp_path / "clear_refs")
    with meter.phase("load"):
        cuda.allocated, cuda.reserved = 300 * MIB, 320 * MIB
    with meter.phase("evaluate"):
        cuda.allocated, cuda.reserved = 120 * MIB, 330 * MIB
    load, evaluate = meter.phases
    assert (load.cuda_peak_allocated_bytes, load.cuda_peak_reserved_bytes) == (300 * MIB, 320 * MIB)
    assert (evaluate.cuda_peak_allocated_bytes, evaluate.cuda_peak_reserved_bytes) == (120 * MIB, 330 * MIB)
    assert cuda.calls == ["sync", "reset", "sync", "sync", "reset", "sync"]


def test_cpu_peak_comes_from_vmhwm_after_a_reset(tmp_path):
    meter = PhaseMeter(status_path=_status_file(tmp_path, 2048, 1024), clear_refs_path=tmp_path / "clear_refs")
    with meter.phase("load") as record:
        pass
    assert (tmp_path / "clear_refs").read_text() == "5"
    assert record.peak_rss_bytes == 2 * MIB and record.rss_end_bytes == MIB
    assert meter.peak_rss_bytes() == 2 * MIB and meter.get("load") is record and meter.get("x") is None


def test_without_a_resettable_peak_no_phase_peak_is_claimed(tmp_path):
    meter = PhaseMeter(status_path=_status_file(tmp_path, 2048, 1024),
                       clear_refs_path=tmp_path / "missing-dir" / "clear_refs")
    with meter.phase("load") as record:
        pass
    assert record.peak_rss_bytes is None and record.rss_end_bytes == MIB  # VmHWM would be the process's


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux")
def test_real_proc_peak_resets_and_sees_a_spike():
    assert reset_peak_rss()
    meter = PhaseMeter()
    with meter.phase("quiet") as quiet:
        pass
    with meter.phase("spike") as spike:
        # A fresh anonymous mapping, every page touched, then unmapped: RSS rises and falls whatever the
        # allocator already holds (a bytearray may reuse free heap pages that are resident already).
        import mmap

        block = mmap.mmap(-1, 64 * MIB)
        for offset in range(0, 64 * MIB, 4096):
            block[offset] = 1
        block.close()
    assert spike.peak_rss_bytes - spike.rss_end_bytes > 48 * MIB
    assert quiet.peak_rss_bytes - quiet.rss_end_bytes < 16 * MIB
    assert read_status_bytes(("VmRSS",))["VmRSS"] > 0


def test_directory_bytes_counts_nested_files(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 100)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_bytes(b"y" * 23)
    assert directory_bytes(tmp_path) == 123


def test_time_calls_skips_warmup():
    calls = []
    times = time_calls(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(calls) == 5 and len(times) == 3 and all(t >= 0 for t in times)


def test_comparison_error_is_relative_to_the_measurement():
    assert compare("peak", "MiB", 500.0, 550.0).error_pct == pytest.approx(10.0)
    assert compare("peak", "MiB", 500.0, None).error_pct is None
    assert compare("peak", "MiB", None, 3.0).error_pct is None
