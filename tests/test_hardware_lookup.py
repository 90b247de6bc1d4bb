"""Lookup, capacity strings, filtering and user extensions of the accelerator catalog."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import hardware_db
from hardware_db import AmbiguousAcceleratorError, CatalogError, UnknownAcceleratorError

ENTRY = """
[[accelerator]]
name = "Acme X1"
aliases = ["X1"]
vendor = "Acme"
architecture = "Acme Gen1"
memory_gb = 32
memory_usable_gib = 30
memory_usable_basis = "measured with the vendor tool"
memory_kind = "dedicated"
memory_bandwidth_gbps = 1000
bf16_tflops = 200
supports_bf16 = true
supports_fp8 = false
supports_fp4 = false
supports_sparse_2_4 = false
gpus_per_node = 8
source = "Acme datasheet 2026"
verified = true
"""
GOOD_FILE = "schema_version = 1\n" + ENTRY


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _entry(**overrides) -> dict:
    from hardware_db._loader import tomllib

    data = tomllib.loads(GOOD_FILE)["accelerator"][0]
    data.update(overrides)
    return data


# --- names ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("query, expected", [
    ("NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 4090"),
    ("rtx 4090", "NVIDIA GeForce RTX 4090"),
    ("RTX-4090", "NVIDIA GeForce RTX 4090"),
    ("4090", "NVIDIA GeForce RTX 4090"),
    ("nvidia rtx 4090", "NVIDIA GeForce RTX 4090"),
    ("H100-SXM", "NVIDIA H100 SXM"),
    ("NVIDIA H100 SXM", "NVIDIA H100 SXM"),
    ("h100 pcie", "NVIDIA H100 PCIe"),
    ("a100 80gb", "NVIDIA A100 80GB SXM"),
    ("A100-PCIE-40GB", "NVIDIA A100 40GB PCIe"),
    ("l40s", "NVIDIA L40S"),
    ("mi300x", "AMD Instinct MI300X"),
    ("Gaudi3", "Intel Gaudi 3"),
    ("tpu v5e", "Google TPU v5e (per chip)"),
    ("M3 Ultra 512GB", "Apple M3 Ultra (512GB)"),
])
def test_get_accepts_names_aliases_and_spelling_variants(query, expected):
    assert hardware_db.get(query).name == expected


def test_get_returns_an_accelerator_unchanged():
    entry = hardware_db.get("T4")
    assert hardware_db.get(entry) is entry


def test_unknown_name_suggests_the_closest_and_the_list_command():
    with pytest.raises(UnknownAcceleratorError) as caught:
        hardware_db.get("rtx 4099")
    message = str(caught.value)
    assert "'RTX 4090'" in message and "fitplan hardware list" in message
    assert isinstance(caught.value, LookupError) and isinstance(caught.value, ValueError)


@pytest.mark.parametrize("query, count", [("A100", 4), ("H100", 3), ("V100", 4), ("GH200", 2)])
def test_family_names_are_ambiguous_and_list_the_candidates(query, count):
    with pytest.raises(AmbiguousAcceleratorError, match=f"matches {count} accelerators") as caught:
        hardware_db.get(query)
    assert isinstance(caught.value, LookupError)


def test_ambiguous_message_names_the_variants():
    with pytest.raises(AmbiguousAcceleratorError) as caught:
        hardware_db.get("a100")
    for name in ("NVIDIA A100 40GB PCIe", "NVIDIA A100 40GB SXM", "NVIDIA A100 80GB PCIe", "NVIDIA A100 80GB SXM"):
        assert name in str(caught.value)


def test_a_unique_prefix_is_not_silently_resolved():
    # "RTX 4060 Ti" exists with 8 GB too; only the 16 GB card is in the catalog.
    with pytest.raises(UnknownAcceleratorError, match="4060 Ti 16GB"):
        hardware_db.get("RTX 4060 Ti")


def test_all_names_lists_names_and_aliases():
    names = hardware_db.all_names()
    assert "NVIDIA GeForce RTX 4090" in names and "RTX 4090" in names
    assert names == sorted(names)


# --- capacity strings ------------------------------------------------------------------------------

@pytest.mark.parametrize("text, gib", [
    ("16GB", 16), ("16 GB", 16), ("24 GiB", 24), ("80G", 80), ("12gb", 12), ("7.5GiB", 7.5), ("1TB", 1024),
])
def test_capacity_strings_give_generic_devices(text, gib):
    device = hardware_db.get(text)
    assert device.is_generic and device.vendor == "generic"
    assert device.memory_usable_gib == gib
    assert device.memory_usable_bytes == int(gib * 2**30)
    assert device.name == f"Generic {gib:g} GiB GPU"
    assert device.memory_usable_basis


def test_no_built_in_spelling_is_a_capacity():
    """hardware_db.get answers a capacity string without loading the catalog; that is only right while
    no built-in name or alias (normalised, as lookups compare them) reads as a capacity."""
    from hardware_db._catalog import _builtin_catalog
    from hardware_db._generic import parse_capacity_gib

    spellings = list(_builtin_catalog()._owner)
    assert len(spellings) > 100
    assert [key for key in spellings if parse_capacity_gib(key) is not None] == []


def test_a_user_entry_named_like_a_capacity_wins_over_the_generic_device():
    hardware_db.register({**hardware_db.get("RTX 4090").model_dump(), "name": "Lab 48GB card",
                          "aliases": ["48GB"], "memory_gb": 48, "memory_usable_gib": 47.5})
    try:
        assert hardware_db.get("48GB").name == "Lab 48GB card"
    finally:
        hardware_db.reset()
    assert hardware_db.get("48GB").is_generic


def test_generic_devices_report_speed_and_price_as_missing():
    device = hardware_db.get("16GB")
    assert "binary" in device.memory_usable_basis
    assert device.memory_bandwidth_gbps is None and device.bf16_tflops is None and device.cloud_usd_per_hour is None
    missing = device.missing_fields()
    for field in ("memory_bandwidth_gbps", "bf16_tflops", "fp8_tflops", "cloud_usd_per_hour", "supports_fp8"):
        assert field in missing


@pytest.mark.parametrize("text, message", [
    ("0GB", "must be positive"), ("-8GB", "must be positive"), ("0.0 GiB", "must be positive"),
    ("200TB", "larger than 100 TiB"), ("102401GB", "larger than 100 TiB"),
])
def test_bad_capacities_are_rejected(text, message):
    with pytest.raises(CatalogError, match=message):
        hardware_db.get(text)


def test_a_capacity_in_megabytes_is_not_a_capacity():
    with pytest.raises(UnknownAcceleratorError):
        hardware_db.get("16 MB")


# --- listing -------------------------------------------------------------------------------------

def test_list_filters_by_vendor_case_insensitively_and_sorts_by_memory():
    amd = hardware_db.list(vendor="amd")
    assert amd and all(e.vendor == "AMD" for e in amd)
    assert [e.memory_gb for e in amd] == sorted(e.memory_gb for e in amd)
    assert len(hardware_db.list()) == len(hardware_db.list(vendor="NVIDIA")) + sum(
        len(hardware_db.list(vendor=v)) for v in hardware_db.vendors() if v != "NVIDIA")


def test_list_is_sorted_by_vendor_then_memory():
    entries = hardware_db.list()
    keys = [(e.vendor.lower(), e.memory_gb) for e in entries]
    assert keys == sorted(keys)


def test_list_memory_bounds_are_inclusive():
    big = hardware_db.list(min_memory_gb=192)
    assert big and all(e.memory_gb >= 192 for e in big)
    assert "AMD Instinct MI300X" in {e.name for e in big}
    small = hardware_db.list(vendor="nvidia", max_memory_gb=12)
    assert {e.name for e in small} >= {"NVIDIA GeForce RTX 3060 12GB", "NVIDIA GeForce RTX 3070"}
    assert all(e.memory_gb <= 12 for e in small)


def test_list_rejects_unknown_vendor_with_suggestion():
    with pytest.raises(CatalogError, match="Did you mean 'NVIDIA'"):
        hardware_db.list(vendor="nvidea")


@pytest.mark.parametrize("kwargs, message", [
    ({"min_memory_gb": -1}, "must be a finite number >= 0"), ({"min_memory_gb": 80, "max_memory_gb": 40}, "larger than"),
])
def test_list_rejects_bad_bounds(kwargs, message):
    with pytest.raises(CatalogError, match=message):
        hardware_db.list(**kwargs)


# --- register, override, reset ---------------------------------------------------------------------

def test_register_dict_then_lookup_by_alias():
    added = hardware_db.register(_entry())
    assert hardware_db.get("x1") is added
    assert "Acme" in hardware_db.vendors()


def test_register_replaces_builtin_with_same_name_until_reset():
    original = hardware_db.get("L4")
    replacement = original.model_copy(update={"memory_usable_gib": 20.0, "notes": "measured"})
    hardware_db.register(replacement)
    assert hardware_db.get("NVIDIA L4").memory_usable_gib == 20.0
    assert hardware_db.get("L4").memory_usable_gib == 20.0
    assert sum(e.name == "NVIDIA L4" for e in hardware_db.list()) == 1
    hardware_db.reset()
    assert hardware_db.get("L4").memory_usable_gib == 22.5


def test_register_under_an_alias_replaces_that_entry():
    hardware_db.register(_entry(name="RTX 4090", aliases=[], vendor="NVIDIA", memory_gb=24, memory_usable_gib=23))
    assert hardware_db.get("rtx4090").memory_usable_gib == 23
    assert hardware_db.get("NVIDIA GeForce RTX 4090").name == "RTX 4090"  # old spellings lead to the override
    assert hardware_db.get("4090").name == "RTX 4090"
    assert "NVIDIA GeForce RTX 4090" not in {e.name for e in hardware_db.list()}


def test_register_rejects_an_alias_that_names_another_entry():
    with pytest.raises(CatalogError, match="alias 'T4' of 'Acme X1' already names 'NVIDIA T4'"):
        hardware_db.register(_entry(aliases=["T4"]))
    with pytest.raises(UnknownAcceleratorError):
        hardware_db.get("Acme X1")  # nothing was half-added


def test_register_invalid_dict_names_the_field():
    with pytest.raises(CatalogError, match=r"register\('Acme X1'\): field 'memory_gb': Input should be a valid number"):
        hardware_db.register(_entry(memory_gb="lots"))
    with pytest.raises(TypeError):
        hardware_db.register("Acme X1")


# --- user files and FITPLAN_HARDWARE -------------------------------------------------------------------

def test_load_user_files_adds_entries(tmp_path):
    path = _write(tmp_path, "hw.toml", GOOD_FILE)
    added = hardware_db.load_user_files([path])
    assert [e.name for e in added] == ["Acme X1"]
    assert hardware_db.get("acme x1").bf16_tflops == 200


def test_load_user_files_accepts_a_directory(tmp_path):
    _write(tmp_path, "a.toml", GOOD_FILE)
    _write(tmp_path, "b.toml", GOOD_FILE.replace("Acme X1", "Acme X2").replace('"X1"', '"X2"'))
    _write(tmp_path, "ignored.txt", "not toml")
    hardware_db.load_user_files([tmp_path])
    assert hardware_db.get("X2").name == "Acme X2"


def test_malformed_file_names_file_entry_and_field(tmp_path):
    text = GOOD_FILE + ENTRY.replace("Acme X1", "My GPU").replace('"X1"', '"MG"').replace(
        "memory_gb = 32", 'memory_gb = "lots"')
    path = _write(tmp_path, "hardware.toml", text)
    with pytest.raises(CatalogError) as caught:
        hardware_db.load_user_files([path])
    message = str(caught.value)
    assert message.startswith(str(path))
    assert "accelerator #2 ('My GPU'): field 'memory_gb': Input should be a valid number" in message
    with pytest.raises(UnknownAcceleratorError):
        hardware_db.get("Acme X1")  # the valid first entry was not applied either


@pytest.mark.parametrize("text, message", [
    ("schema_version = 2\n", "unsupported schema_version 2"),
    ("[[accelerator]]\nname = 'x'\n", "missing 'schema_version'"),
    ("schema_version = 1\nversion = 3\n", "unknown top-level key"),
    ("schema_version = 1\n[[accelerator\n", "invalid TOML"),
    (GOOD_FILE + ENTRY, "repeats the name 'Acme X1'"),
    (GOOD_FILE.replace("verified = true", ""), "field 'verified': Field required"),
])
def test_bad_files_fail_clearly(tmp_path, text, message):
    path = _write(tmp_path, "bad.toml", text)
    with pytest.raises(CatalogError, match=message):
        hardware_db.load_user_files([path])


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(CatalogError, match=f"hardware file not found: {missing}"):
        hardware_db.load_user_files([missing])


def test_env_var_files_and_directories_load_on_first_use(tmp_path, monkeypatch):
    first = _write(tmp_path, "one.toml", GOOD_FILE)
    folder = tmp_path / "more"
    folder.mkdir()
    _write(folder, "two.toml", GOOD_FILE.replace("Acme X1", "Acme X2").replace('"X1"', '"X2"'))
    monkeypatch.setenv("FITPLAN_HARDWARE", os.pathsep.join([str(first), "", str(folder)]))
    hardware_db.reset()
    assert hardware_db.get("X1").name == "Acme X1"
    assert hardware_db.get("X2").name == "Acme X2"
    monkeypatch.delenv("FITPLAN_HARDWARE")
    hardware_db.reset()
    with pytest.raises(UnknownAcceleratorError):
        hardware_db.get("X1")


def test_env_var_with_missing_file_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("FITPLAN_HARDWARE", str(tmp_path / "gone.toml"))
    hardware_db.reset()
    with pytest.raises(CatalogError, match="FITPLAN_HARDWARE: hardware file not found"):
        hardware_db.get("T4")


# --- import weight --------------------------------------------------------------------------------------

def test_import_hardware_db_stays_light():
    code = ("import sys, hardware_db; hardware_db.get('rtx 4090'); "
            "print(sorted(m for m in ('torch', 'transformers', 'pandas', 'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("query, expected", [
    ("A100 80GB SXM", "NVIDIA A100 80GB SXM"),
    ("GeForce RTX 4090", "NVIDIA GeForce RTX 4090"),
    ("Instinct MI300X", "AMD Instinct MI300X"),
])
def test_canonical_name_without_the_vendor_resolves(query, expected):
    assert hardware_db.get(query).name == expected
