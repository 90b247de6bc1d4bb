"""hardware_db.probe: the host as a catalog entry, saved as a user hardware file, usable by the speed model."""

from __future__ import annotations

import pytest

import hardware_db
import planner
from hardware_db.probe import HostProbe, ProbeError, entry_toml, host_entry, measure_bandwidth, save_entry
from planner.cli import main

PROBE = HostProbe(cpu_name="Test CPU 9000", vendor="AMD", logical_cores=8, ram_bytes=32 * 2**30,
                  available_bytes=24 * 2**30, bandwidth_gbps=40.0, matmul_gflops={"fp32": 500.0, "bf16": 900.0},
                  matmul_backend="torch, 8 threads", cpu_flags=("avx512_bf16",))


def test_host_entry_round_trips_through_a_user_hardware_file(tmp_path, monkeypatch):
    entry = host_entry(PROBE, "my-box")
    assert entry.memory_bandwidth_gbps == 40.0 and entry.fp32_tflops == 0.5 and entry.bf16_tflops == 0.9
    assert entry.supports_bf16 and entry.form_factor.startswith("host CPU") and "Caveat:" in entry.notes
    path = save_entry(entry, tmp_path / "box.toml")
    monkeypatch.setenv("FITPLAN_HARDWARE", str(path))
    hardware_db.reset()
    assert hardware_db.get("my-box") == entry


def test_save_never_overwrites(tmp_path):
    entry = host_entry(PROBE, "box")
    save_entry(entry, tmp_path / "box.toml")
    with pytest.raises(ProbeError, match="exists"):
        save_entry(entry, tmp_path / "box.toml")


def test_a_probed_cpu_is_a_device_for_estimate(tmp_path, monkeypatch):
    path = save_entry(host_entry(PROBE, "my-box"), tmp_path / "box.toml")
    monkeypatch.setenv("FITPLAN_HARDWARE", str(path))
    hardware_db.reset()
    e = planner.estimate("Qwen/Qwen2.5-0.5B", "bf16", gpu="my-box", prompt_len=128, new_tokens=64)
    s = e.speed
    # transformers on a host CPU runs with the CPU constants
    assert s.engine == "hf-cpu" and s.decode.bound in ("memory", "overhead")
    assert s.decode.bytes_seconds == pytest.approx(s.decode.bytes_read / (40e9 * s.decode.inputs["bandwidth_efficiency"]),
                                                   rel=1e-6)
    assert e.cost.usd_per_hour is None


def test_entry_toml_escapes_strings():
    text = entry_toml(host_entry(HostProbe(**{**PROBE.__dict__, "cpu_name": 'Quote "CPU" \\ x'})))
    assert '\\"CPU\\"' in text and "\\\\" in text


def test_bandwidth_measurement_is_a_positive_rate():
    assert measure_bandwidth(size_bytes=8 * 2**20, repeats=2) > 0.1


def test_cli_probe_save_to_an_unwritable_place_is_one_line_exit_2(capsys, monkeypatch, tmp_path):
    import hardware_db.probe as probe

    monkeypatch.setattr(probe, "probe_host", lambda: PROBE)
    monkeypatch.setenv("FITPLAN_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "box.toml").write_text("taken")
    code = main(["hardware", "probe", "--save", str(tmp_path / "box.toml")])
    out, err = capsys.readouterr()
    assert code == 2 and "exists" in err and len(err.strip().splitlines()) == 1
    assert "[[accelerator]]" in out and 'name = "box"' in out


def test_cli_probe_prints_a_catalog_entry_and_refreshes_the_cache(capsys, monkeypatch, tmp_path):
    import hardware_db.probe as probe

    monkeypatch.setattr(probe, "probe_host", lambda: PROBE)
    monkeypatch.setenv("FITPLAN_CACHE_DIR", str(tmp_path))
    assert main(["hardware", "probe"]) == 0
    out = capsys.readouterr().out
    assert "memory_bandwidth_gbps = 40.0" in out and "fp32_tflops = 0.5" in out
    assert probe.cached_host_entry().memory_bandwidth_gbps == 40.0
