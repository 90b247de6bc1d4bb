"""The shipped accelerator data and the Accelerator schema: coverage, consistency, pinned facts."""

from __future__ import annotations

import re
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest
from pydantic import ValidationError

import hardware_db
from hardware_db import Accelerator
from hardware_db._loader import builtin_entries, tomllib  # tomllib, or tomli on Python 3.10
from hardware_db.names import normalize_name

ENTRIES = builtin_entries()
BY_NAME = {entry.name: entry for entry in ENTRIES}
MIB = 2**20


def _minimal(**overrides) -> dict:
    """A valid entry dict for schema tests."""
    data = dict(name="Test GPU", vendor="NVIDIA", architecture="Ada", compute_capability="8.9",
                memory_gb=24, memory_usable_gib=24, memory_usable_basis="test", memory_kind="dedicated",
                supports_bf16=True, supports_fp8=True, supports_fp4=False, supports_sparse_2_4=True,
                gpus_per_node=4, source="test", verified=True)
    data.update(overrides)
    return data


# --- coverage -----------------------------------------------------------------------------------

def test_catalog_has_at_least_60_entries_from_every_vendor_family():
    assert len(ENTRIES) >= 60
    counts = Counter(entry.vendor for entry in ENTRIES)
    assert set(counts) == {"NVIDIA", "AMD", "Intel", "Apple", "Google"}
    assert counts["NVIDIA"] >= 40


@pytest.mark.parametrize("family", ["Turing", "Volta", "Ampere", "Ada", "Hopper", "Blackwell"])
def test_nvidia_generations_are_covered(family):
    assert any(e.vendor == "NVIDIA" and e.architecture.startswith(family) for e in ENTRIES)


@pytest.mark.parametrize("filename, minimum", [
    ("nvidia_geforce.toml", 10), ("nvidia_workstation.toml", 4), ("nvidia_datacenter.toml", 20),
    ("amd.toml", 5), ("intel.toml", 3), ("apple.toml", 3), ("google.toml", 3),
])
def test_each_data_file_is_version_1_with_entries(filename, minimum):
    document = tomllib.loads((resources.files("hardware_db") / "data" / filename).read_text("utf-8"))
    assert document["schema_version"] == 1
    assert len(document["accelerator"]) >= minimum


@pytest.mark.parametrize("needle", ["Instinct", "Radeon", "Gaudi", "Arc", "Apple M", "TPU"])
def test_non_nvidia_families_are_covered(needle):
    assert any(needle in entry.name for entry in ENTRIES)


# --- required fields and provenance --------------------------------------------------------------

@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_every_entry_has_required_fields_and_a_source(entry):
    for field, info in Accelerator.model_fields.items():
        if info.is_required():
            assert getattr(entry, field) is not None, field
    assert entry.source.strip() and entry.memory_usable_basis.strip()
    assert entry.vendor and entry.architecture and entry.memory_gb > 0
    assert 0 < entry.memory_usable_gib <= entry.memory_gb
    assert entry.gpus_per_node >= 1 and not entry.is_generic


def test_names_and_aliases_are_unique_after_normalisation():
    keys = Counter(key for e in ENTRIES for key in {normalize_name(name) for name in (e.name, *e.aliases)})
    assert [key for key, count in keys.items() if count > 1] == []


def test_shared_codenames_and_family_names_are_not_aliases():
    aliases = {normalize_name(a) for e in ENTRIES for a in e.aliases}
    for dropped in ("GA102", "AD102", "GH100", "Navi 31", "A100", "H100", "V100", "GH200", "M3 Max"):
        assert normalize_name(dropped) not in aliases


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_unverified_entries_say_why(entry):
    if not entry.verified:
        assert "Caveat:" in entry.notes


def test_derived_geforce_tensor_numbers_are_marked_unverified():
    geforce = [e for e in ENTRIES if "GeForce" in e.name]
    assert len(geforce) >= 10 and not any(e.verified for e in geforce)
    assert BY_NAME["NVIDIA H100 SXM"].verified


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.cloud_usd_per_hour is not None], ids=lambda e: e.name)
def test_cloud_prices_carry_provider_source_and_date_format(entry):
    assert entry.cloud_provider and entry.cloud_price_source
    assert entry.cloud_price_date is None or re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", entry.cloud_price_date)


# --- consistency --------------------------------------------------------------------------------

@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_tflops_imply_their_support_flag(entry):
    assert entry.bf16_tflops is None or entry.supports_bf16
    assert entry.fp8_tflops is None or entry.supports_fp8
    assert entry.fp4_tflops is None or entry.supports_fp4


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.vendor == "NVIDIA"], ids=lambda e: e.name)
def test_nvidia_format_support_matches_compute_capability(entry):
    cc = entry.compute_capability_tuple
    assert cc is not None
    if entry.fp8_tflops is not None or entry.supports_fp8:
        assert cc >= (8, 9)
    if entry.fp4_tflops is not None or entry.supports_fp4:
        assert cc >= (10, 0)
    if entry.supports_bf16 or entry.supports_sparse_2_4:
        assert cc >= (8, 0)
    expected = {"Turing": (7, 5), "Volta": (7, 0), "Ada": (8, 9), "Hopper": (9, 0)}
    for family, want in expected.items():
        if entry.architecture.startswith(family):
            assert cc == want


def test_only_nvidia_entries_have_a_compute_capability():
    assert all(e.compute_capability is None for e in ENTRIES if e.vendor != "NVIDIA")


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_units_are_plausible(entry):
    if entry.memory_bandwidth_gbps is not None:
        assert 100 <= entry.memory_bandwidth_gbps <= 10_000  # GB/s, not TB/s or B/s
    for dtype in hardware_db.PEAK_FIELDS:
        peak = entry.peak_tflops(dtype)
        assert peak is None or 1 <= peak <= 20_000  # TFLOPS, not FLOPS or PFLOPS
    if entry.fp8_tflops and entry.bf16_tflops:
        assert entry.fp8_tflops >= entry.bf16_tflops


# --- usable memory and node size -----------------------------------------------------------------

def test_usable_memory_sourced_figures():
    assert BY_NAME["NVIDIA L40S"].memory_usable_bytes == 46068 * MIB
    assert BY_NAME["NVIDIA B300"].memory_usable_bytes == 275040 * MIB
    assert BY_NAME["NVIDIA GB200 (per GPU)"].memory_usable_bytes == 189471 * MIB
    assert BY_NAME["NVIDIA H100 NVL"].memory_usable_gib == 94


@pytest.mark.parametrize("name", ["NVIDIA A10", "NVIDIA A10G", "NVIDIA A40", "NVIDIA L4", "NVIDIA L40"])
def test_ecc_gddr_datacenter_parts_lose_one_sixteenth(name):
    entry = BY_NAME[name]
    assert entry.ecc is True
    assert entry.memory_usable_gib == pytest.approx(entry.memory_gb * 15 / 16)


def test_t4_usable_is_what_cuda_reports_not_the_nvidia_smi_total():
    t4 = BY_NAME["NVIDIA T4"]
    assert t4.ecc is True and t4.memory_gb * 15 / 16 == 15.0  # 15360 MiB in nvidia-smi with ECC on
    assert t4.memory_usable_gib == 14.75  # cudaMemGetInfo total: the driver keeps ~256 MiB more
    assert "15360 MiB" in t4.memory_usable_basis and "14.75 GiB" in t4.memory_usable_basis


def test_rtx_3090_usable_is_the_total_capacity_pytorch_prints():
    assert BY_NAME["NVIDIA GeForce RTX 3090"].memory_usable_gib == 23.70


def test_hbm_and_consumer_cards_keep_marketed_capacity():
    assert BY_NAME["NVIDIA H100 SXM"].memory_usable_gib == 80
    assert BY_NAME["NVIDIA GeForce RTX 4090"].memory_usable_gib == 24
    assert BY_NAME["AMD Instinct MI300X"].memory_usable_gib == 192


def test_apple_unified_memory_gives_the_gpu_three_quarters():
    apple = [e for e in ENTRIES if e.vendor == "Apple"]
    assert apple and all(e.memory_kind == "unified" for e in apple)
    assert all(e.memory_usable_gib == pytest.approx(0.75 * e.memory_gb) for e in apple)
    assert BY_NAME["Apple M3 Ultra (512GB)"].memory_usable_gib == 384


def test_gpus_per_node_rules():
    assert BY_NAME["NVIDIA H100 SXM"].gpus_per_node == 8
    assert BY_NAME["NVIDIA L40S"].gpus_per_node == 8
    assert BY_NAME["NVIDIA GB200 (per GPU)"].gpus_per_node == 4
    assert BY_NAME["NVIDIA GeForce RTX 4090"].gpus_per_node == 4
    assert BY_NAME["NVIDIA RTX 6000 Ada Generation"].gpus_per_node == 4
    assert BY_NAME["Google TPU v5e (per chip)"].gpus_per_node == 8
    assert all(e.gpus_per_node == 1 for e in ENTRIES if e.vendor == "Apple")
    assert all(e.gpus_per_node == 8 for e in ENTRIES if "SXM" in (e.form_factor or ""))


# --- pinned facts (sourced values that other packages rely on) ------------------------------------

def test_pinned_numbers():
    h100 = BY_NAME["NVIDIA H100 SXM"]
    assert (h100.bf16_tflops, h100.fp8_tflops, h100.memory_bandwidth_gbps) == (989, 1979, 3350)
    assert BY_NAME["NVIDIA GeForce RTX 4090"].fp8_tflops == 330.3
    assert BY_NAME["NVIDIA B300"].int8_tops == 153.5  # cut on Blackwell Ultra, not B200's 4500
    assert BY_NAME["AMD Instinct MI100"].fp16_tflops == 184.6 and BY_NAME["AMD Instinct MI100"].bf16_tflops == 92.3
    assert BY_NAME["NVIDIA A100 80GB SXM"].fp8_tflops is None and not BY_NAME["NVIDIA A100 80GB SXM"].supports_fp8


def test_corrections_of_assumed_facts():
    v6e = BY_NAME["Google TPU v6e Trillium (per chip)"]
    assert v6e.supports_fp8 is False and v6e.ecc is None and "Catalog correction" in v6e.notes
    assert BY_NAME["Apple M2 Ultra (192GB)"].ecc is None


# --- schema behaviour ------------------------------------------------------------------------------

def test_schema_helpers():
    entry = BY_NAME["NVIDIA L4"]
    assert entry.compute_capability_tuple == (8, 9)
    assert entry.peak_tflops("BF16") == 121 and entry.peak_tflops("int8") == 242
    assert entry.peak_tflops("fp4") is None
    with pytest.raises(ValueError, match="expected one of fp32, tf32"):
        entry.peak_tflops("fp12")


def test_missing_fields_separates_unknown_from_unsupported():
    a100 = BY_NAME["NVIDIA A100 80GB SXM"]
    assert "fp8_tflops" not in a100.missing_fields()  # not supported, not unknown
    assert "launch_price_usd" in a100.missing_fields()
    a10g = BY_NAME["NVIDIA A10G"]
    assert {"tf32_tflops", "tdp_w"} <= set(a10g.missing_fields())


@pytest.mark.parametrize("overrides, message", [
    ({"supports_fp8": False, "fp8_tflops": 100}, "supports_fp8 must be true"),
    ({"compute_capability": "8.6", "supports_fp8": True}, "compute capability >= 8.9"),
    ({"compute_capability": "9.0", "fp4_tflops": 10, "supports_fp4": True}, "compute capability >= 10.0"),
    ({"vendor": "AMD"}, "NVIDIA-only"),
    ({"memory_usable_gib": 25}, "exceeds memory_gb"),
    ({"cloud_usd_per_hour": 1.0}, "needs cloud_provider"),
    ({"cloud_usd_per_hour": 1.0, "cloud_provider": "x", "cloud_price_source": "y",
      "cloud_price_date": "May 2026"}, "YYYY-MM"),
    ({"memory_gb": "lots"}, "valid number"),
    ({"memroy_gb": 24}, "Extra inputs are not permitted"),
    ({"fp32_tflops": -1}, "greater than 0"),
    ({"source": ""}, "at least 1 character"),
])
def test_schema_rejects_inconsistent_entries(overrides, message):
    with pytest.raises(ValidationError, match=message):
        Accelerator.model_validate(_minimal(**overrides))


def test_accelerator_is_frozen():
    entry = Accelerator.model_validate(_minimal())
    with pytest.raises(ValidationError):
        entry.memory_gb = 48
