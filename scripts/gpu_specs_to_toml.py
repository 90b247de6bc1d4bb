"""One-off generator: research ``gpu_specs.csv`` -> ``hardware_db/data/*.toml``.

The runtime only reads the TOML files; this script records how they were made from the research CSV
(69 rows, each with sources) and every judgement applied on the way, so a reviewer can check them:

* rows whose free-text fields were split by an unquoted comma are re-joined;
* chip codenames shared by several products (GA102, AD102, GH100, Navi 31 ...) and family names that
  hide a memory or form-factor choice ("A100", "H100", "M3 Max") are dropped as aliases: a lookup of
  "A100" must not silently pick 40 GB or 80 GB. Such queries get an "ambiguous" error instead;
* facts the CSV marks as assumed (ECC on TPUs, "ECC not advertised" on Apple, fp8 on TPU v6e) become
  unknown/false rather than guesses;
* usable memory and GPUs per node are set by the rules below, with the rule written into each entry;
* rows whose key numbers are derived or recalled get ``verified = false`` and a "Caveat:" in notes.

Usage: ``python scripts/gpu_specs_to_toml.py [CSV] [OUT_DIR]`` (defaults: ../shared/research/gpu_specs.csv
next to the repo, and hardware_db/data). It validates every entry with the runtime schema and prints
the consistency checks it ran.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hardware_db._loader import tomllib  # noqa: E402  (after sys.path setup; tomli on 3.10)
from hardware_db._schema import Accelerator  # noqa: E402
from hardware_db.names import normalize_name  # noqa: E402

DEFAULT_CSV = REPO.parent / "shared" / "research" / "gpu_specs.csv"
DEFAULT_OUT = REPO / "hardware_db" / "data"
CSV_COLUMNS = 28

# ---------------------------------------------------------------------------------------------
# Aliases

# Chip codenames shared by several products in the real world (and often by several rows here).
SHARED_CODENAMES = {
    "TU102", "TU104", "GA100", "GA102", "GA104", "GA106", "AD102", "AD103", "AD104", "AD106",
    "GB202", "GB203", "GB205", "GV100", "GH100", "Navi 31", "gfx1100", "Aldebaran", "Aldebaran XL",
    "ACM-G10", "Ponte Vecchio", "PVC",
}
# Names that leave a memory size or form factor open; they resolve as "ambiguous" (prefix match).
FAMILY_ALIASES = {
    "A100", "A100 SXM", "A100 PCIe", "H100", "H200", "V100", "V100 SXM2", "V100 PCIe", "Tesla V100",
    "Tesla V100 PCIe", "GH200", "Grace Hopper", "GH200 Grace Hopper Superchip", "Grace Blackwell",
    "M2 Ultra", "Apple M2 Ultra", "Mac Studio M2 Ultra", "Mac Pro M2 Ultra",
    "M3 Max", "Apple M3 Max", "MacBook Pro M3 Max",
    "M4 Max", "Apple M4 Max", "MacBook Pro M4 Max", "Mac Studio M4 Max",
    "M3 Ultra", "Apple M3 Ultra", "Mac Studio M3 Ultra",
}
# Aliases that name something else.
WRONG_ALIASES = {
    "MI350 series": "MI350X is a different part (lower clock and power)",
    "g5": "an EC2 instance family, not the GPU",
}

# ---------------------------------------------------------------------------------------------
# Files

FILES = {
    "nvidia_geforce.toml": "NVIDIA GeForce consumer cards",
    "nvidia_workstation.toml": "NVIDIA workstation (RTX / RTX PRO) cards",
    "nvidia_datacenter.toml": "NVIDIA datacenter GPUs and superchips",
    "amd.toml": "AMD Instinct and Radeon",
    "intel.toml": "Intel Gaudi, Arc and Data Center GPU Max",
    "apple.toml": "Apple silicon (unified memory)",
    "google.toml": "Google Cloud TPU chips",
}


def file_for(row: dict) -> str:
    name, vendor = row["name"], row["vendor"]
    if vendor == "NVIDIA":
        if "GeForce" in name:
            return "nvidia_geforce.toml"
        if "workstation" in row["form_factor"] or "RTX PRO" in name:
            return "nvidia_workstation.toml"
        return "nvidia_datacenter.toml"
    return {"AMD": "amd.toml", "Intel": "intel.toml", "Intel (Habana)": "intel.toml",
            "Apple": "apple.toml", "Google": "google.toml"}[vendor]


# ---------------------------------------------------------------------------------------------
# Usable memory (GiB). Device-memory "GB" from GPU vendors is binary: a 24 GB card has 24 GiB of DRAM.

SOURCED_USABLE = {
    "NVIDIA L40S": (46068 / 1024, "46068 MiB as stored by ai-dynamo/aiconfigurator systems/l40s.yaml "
                    "(= 48 GiB less 1/16 for inline ECC, less 12 MiB)"),
    "NVIDIA H100 NVL": (94.0, "94 GiB per chip per stas00/ml-engineering compute/accelerator/README.md"),
    "NVIDIA H200 SXM": (141.0, "141 GiB as stored by ai-dynamo/aiconfigurator systems/h200_sxm.yaml"),
    "NVIDIA GH200 (144GB HBM3e)": (141.0, "141 GiB usable per stas00/ml-engineering (marketed 144 GB)"),
    "NVIDIA B200": (180.0, "180 GiB as stored by ai-dynamo/aiconfigurator systems/b200_sxm.yaml"),
    "NVIDIA B300": (275040 / 1024, "275040 MiB as stored by ai-dynamo/aiconfigurator systems/b300_sxm.yaml "
                    "(marketed 288 GB)"),
    "NVIDIA GB200 (per GPU)": (189471 / 1024, "189471 MiB as stored by ai-dynamo/aiconfigurator "
                               "systems/gb200.yaml (marketed 186 GB)"),
}
# GDDR datacenter parts that ship with ECC enabled: inline ECC reserves 1/16 of capacity
# (T4: 16 GiB -> 15 GiB = 15360 MiB in nvidia-smi; L40S 46068 MiB above).
GDDR_ECC_ON = {"NVIDIA T4", "NVIDIA A10", "NVIDIA A10G", "NVIDIA A40", "NVIDIA L4", "NVIDIA L40"}
ECC_RULE = ("GDDR datacenter part that ships with ECC on: inline ECC reserves 1/16, so usable = "
            "marketed GiB x 15/16 (T4: 16 GiB -> 15360 MiB in nvidia-smi; L40S: 46068 MiB in aiconfigurator)")
HBM_RULE = ("HBM: ECC is carried without using capacity, and the vendor's GB is binary, so usable = marketed "
            "GiB; the driver and runtime still reserve a few hundred MiB (modelled by the planner)")
NO_ECC_RULE = ("{kind} card, ECC off by default: usable = marketed GB read as GiB (vendors' device-memory GB "
               "are binary){ecc_note}")
APPLE_FRACTION = 0.75
APPLE_RULE = ("unified memory shared with macOS: the GPU may wire about 75% of RAM by default on "
              "large-memory Macs (Metal recommendedMaxWorkingSetSize); raise it with "
              "`sudo sysctl iogpu.wired_limit_mb=<MiB>`. Approximate rule, not measured here")
EXTRA_USABLE_NOTES = {
    "NVIDIA A40": " Agrees with microsoft/vidur, which models A40 as 45 GB usable.",
    "NVIDIA L4": (" ai-dynamo/aiconfigurator systems/l4.yaml stores 24 GiB, which is the marketed size; "
                  "with ECC on (the default) 1/16 is reserved as on every ECC GDDR part."),
}


def usable_memory(row: dict) -> tuple[float, str]:
    name, marketed = row["name"], float(row["memory_gb_nominal"])
    if name in SOURCED_USABLE:
        return SOURCED_USABLE[name]
    if row["vendor"] == "Apple":
        return marketed * APPLE_FRACTION, APPLE_RULE
    if "HBM" in row["memory_type"]:
        return marketed, HBM_RULE
    if name in GDDR_ECC_ON:
        return marketed * 15 / 16, ECC_RULE + EXTRA_USABLE_NOTES.get(name, "")
    kind = "workstation" if file_for(row) == "nvidia_workstation.toml" or "PRO" in name else "consumer"
    ecc_note = "; enabling ECC costs 1/16 on NVIDIA GDDR cards" if row["ecc"] == "yes" else ""
    return marketed, NO_ECC_RULE.format(kind=kind.capitalize(), ecc_note=ecc_note)


# ---------------------------------------------------------------------------------------------
# GPUs per node: the largest usual single-node (NVLink / Infinity Fabric / host) group, which bounds
# tensor parallelism. Rule first, then named exceptions with their basis.

GPUS_PER_NODE_EXCEPTIONS = {
    "NVIDIA GB200 (per GPU)": (4, "4 GPUs per compute node (2 superchips) per aiconfigurator gb200.yaml; "
                               "the 72-GPU NVLink rack spans 18 nodes"),
    "NVIDIA GH200 (96GB HBM3)": (4, "4 superchips per node in HPE Cray EX254n-style blades (recalled, "
                                 "unverified); cloud instances often expose 1"),
    "NVIDIA GH200 (144GB HBM3e)": (4, "4 superchips per node in HPE Cray EX254n-style blades (recalled, "
                                   "unverified); cloud instances often expose 1"),
    "AMD Instinct MI250X": (4, "4 OAM modules (8 GCDs) per node as in HPE Cray EX235a / Frontier "
                            "(recalled, unverified)"),
    "Google TPU v5p (per chip)": (4, "4 chips per TPU VM host (CSV gives no figure; recalled, unverified)"),
}


def gpus_per_node(row: dict) -> tuple[int, str]:
    name, form = row["name"], row["form_factor"]
    if name in GPUS_PER_NODE_EXCEPTIONS:
        return GPUS_PER_NODE_EXCEPTIONS[name]
    if row["vendor"] == "Apple":
        return 1, "one SoC per Mac"
    if row["vendor"] == "Google":
        match = re.search(r"(\d+) chips/host", row["interconnect"])
        if match is None:
            raise ValueError(f"{name}: no chips/host in the CSV and no exception given")
        return int(match.group(1)), f"{match.group(1)} chips per TPU host (CSV interconnect column)"
    if "SXM" in form or "OAM" in form:
        return 8, "8-module HGX/OAM baseboard"
    category = file_for(row)
    if category == "nvidia_geforce.toml" or "consumer" in form:
        return 4, "consumer card: up to 4 in a multi-GPU workstation (not a datacenter node)"
    if category == "nvidia_workstation.toml" or "workstation" in form:
        return 4, "workstation card: up to 4 per workstation"
    return 8, "PCIe datacenter card: 8-GPU PCIe servers are standard"


# ---------------------------------------------------------------------------------------------
# Prices: provider and date of the on-demand price the CSV's cloud_usd_per_hour column carries.

CLOUD_PRICE = {
    "NVIDIA GeForce RTX 4090": ("RunPod (Secure Cloud)", "2026-09-25"),
    "NVIDIA RTX A6000": ("Lambda", None),
    "NVIDIA RTX PRO 6000 Blackwell": ("Akash Network (marketplace)", "2026-09-20"),
    "NVIDIA T4": ("Modal (serverless)", "2026-05-07"),
    "NVIDIA V100 SXM2 16GB": ("Lambda (8x instance / 8)", None),
    "NVIDIA A10": ("Lambda", "2026-09-25"),
    "NVIDIA A10G": ("AWS (g5.xlarge, us-east-1, includes 4 vCPU / 16 GiB)", "2026-06"),
    "NVIDIA A40": ("RunPod (Secure Cloud)", "2026-08-19"),
    "NVIDIA L4": ("Modal (serverless)", "2026-05-07"),
    "NVIDIA L40S": ("RunPod (Secure Cloud)", "2026-09-25"),
    "NVIDIA A100 40GB SXM": ("Lambda", "2026-09-25"),
    "NVIDIA A100 80GB PCIe": ("RunPod (Secure Cloud)", "2026-09-25"),
    "NVIDIA A100 80GB SXM": ("RunPod (Secure Cloud)", "2026-09-25"),
    "NVIDIA H100 PCIe": ("RunPod (Secure Cloud)", "2026-09-25"),
    "NVIDIA H100 SXM": ("RunPod (Secure Cloud)", "2026-09-25"),
    "NVIDIA H100 NVL": ("RunPod (Secure Cloud)", "2026-09-25"),
    "NVIDIA H200 SXM": ("RunPod (Secure Cloud)", "2026-09-25"),
    "NVIDIA GH200 (96GB HBM3)": ("Lambda", "2026-09-25"),
    "NVIDIA B200": ("RunPod (Secure Cloud)", "2026-09-25"),
    "NVIDIA B300": ("RunPod", "2026-10-07"),
    "AMD Instinct MI300X": ("DigitalOcean (list price)", "2026-10-07"),
    "Google TPU v5e (per chip)": ("Google Cloud", "2025-02"),
    "Google TPU v5p (per chip)": ("Google Cloud", "2025-02"),
}

# ---------------------------------------------------------------------------------------------
# Verification: rows whose key numbers (memory, bandwidth, TFLOPS) are derived, recalled or weak.

GEFORCE_DERIVED = "tensor TFLOPS derived from SM count x boost clock (method in the CSV notes), not datasheet figures"
UNVERIFIED = {
    "NVIDIA RTX A4000": "TF32 and INT8 derived from the datasheet FP16 figure",
    "NVIDIA RTX A5000": "no consulted source; all figures recalled from the NVIDIA datasheet",
    "NVIDIA RTX 4000 Ada Generation": "no consulted source for the desktop card; datasheet figures recalled",
    "NVIDIA RTX 6000 Ada Generation": "tensor TFLOPS derived from a recalled datasheet figure (1,457 sparse FP8)",
    "NVIDIA RTX PRO 6000 Blackwell": ("tensor TFLOPS scaled from aiconfigurator's Server Edition figures "
                                      "(bf16 467.8 at 2430 MHz) to an unverified 2617 MHz Workstation boost"),
    "NVIDIA A10": "TF32 recalled from the datasheet",
    "NVIDIA A10G": "no public datasheet; tensor figures from llm-analysis only, FP32 recalled",
    "NVIDIA A30": "TF32 recalled from the datasheet",
    "NVIDIA L4": "FP32 and TF32 recalled from the datasheet",
    "NVIDIA H100 NVL": "compute figures recalled from the datasheet (memory and bandwidth sourced)",
    "NVIDIA H200 NVL": "compute figures recalled from the datasheet (memory and bandwidth sourced)",
    "NVIDIA H20": "FP8 assumed equal to the INT8 headline figure",
    "AMD Instinct MI100": "BF16 recalled; INT8 rate chosen over llm-analysis's 369.2",
    "AMD Radeon RX 7900 XTX": "FP16/BF16 WMMA peak unverified",
    "AMD Radeon PRO W7900": "FP32/FP16 recalled",
    "Intel Data Center GPU Max 1550": "XMX TFLOPS derived from engine count x clock",
    "Apple M2 Ultra (192GB)": "FP32 estimated from GPU cores x clock; Apple publishes no TFLOPS",
    "Apple M3 Max (128GB)": "FP32 estimated from GPU cores x clock; Apple publishes no TFLOPS",
    "Apple M4 Max (128GB)": "FP32 estimated from GPU cores x clock; Apple publishes no TFLOPS",
    "Apple M3 Ultra (512GB)": "FP32 estimated from GPU cores x clock; Apple publishes no TFLOPS",
}

# ---------------------------------------------------------------------------------------------
# Corrections of facts the CSV itself marks as assumed (field -> (value, reason)).

TPU_ECC = (None, "CSV marks ECC as assumed (unverified); recorded as unknown")
CORRECTIONS: dict[str, dict[str, tuple[object, str]]] = {
    "Google TPU v4 (per chip)": {"ecc": TPU_ECC},
    "Google TPU v5e (per chip)": {"ecc": TPU_ECC},
    "Google TPU v5p (per chip)": {"ecc": TPU_ECC},
    "Google TPU v6e Trillium (per chip)": {
        "ecc": TPU_ECC,
        "supports_fp8": (False, "fp8 support is claimed only by secondary sources and absent from Google's "
                                "spec table; flag left false until confirmed"),
    },
    "NVIDIA RTX A5000": {"source": (
        "NVIDIA RTX A5000 datasheet, recalled (64 SM @ 1695 MHz); not confirmed in a consulted source",
        "the CSV's spec_source read 'recalled, unverified ...; no source found'")},
    **{apple: {"ecc": (None, "Apple does not advertise ECC; recorded as unknown rather than 'no'")}
       for apple in ("Apple M2 Ultra (192GB)", "Apple M3 Max (128GB)", "Apple M4 Max (128GB)",
                     "Apple M3 Ultra (512GB)")},
}

# NVIDIA compute capability by architecture family (CUDA SM versions).
CC_BY_ARCH = {"Turing": "7.5", "Volta": "7.0", "Ada": "8.9", "Hopper": "9.0"}


def expected_cc(architecture: str) -> str:
    if architecture.startswith("Ampere"):
        return "8.0" if "GA100" in architecture else "8.6"
    if architecture.startswith("Blackwell"):
        if "RTX" in architecture:
            return "12.0"
        return "10.3" if "Ultra" in architecture else "10.0"
    for family, cc in CC_BY_ARCH.items():
        if architecture.startswith(family):
            return cc
    raise ValueError(f"no compute capability rule for {architecture!r}")


# ---------------------------------------------------------------------------------------------
# Reading and converting


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = []
        for fields in reader:
            if len(fields) > CSV_COLUMNS:
                fields = _rejoin(fields)
            rows.append(dict(zip(header, fields, strict=True)))
    return rows


def _rejoin(fields: list[str]) -> list[str]:
    """Undo a split caused by an unquoted "recalled, unverified" in spec_source or notes."""
    if len(fields) != CSV_COLUMNS + 1:
        raise ValueError(f"{fields[0]}: {len(fields)} fields, cannot repair")
    at = 26 if fields[26] == "recalled" else 27  # spec_source (A5000) or notes (all others)
    return fields[:at] + [fields[at] + "," + fields[at + 1]] + fields[at + 2:]


def _number(text: str) -> float | None:
    return float(text) if text.strip() else None


def _flag(text: str) -> bool:
    if text not in ("yes", "no"):
        raise ValueError(f"expected yes/no, got {text!r}")
    return text == "yes"


def _tidy(text: str) -> str:
    """Collapse whitespace and the CSV's doubled "unverified (unverified)" markers."""
    text = re.sub(r"\s+", " ", text).strip()
    for doubled in ("unverified (unverified)", "unverified, unverified", "unverified; unverified"):
        text = text.replace(doubled, "unverified")
    return text


def convert(row: dict) -> tuple[dict, dict[str, str]]:
    """Return the TOML entry (schema field -> value) and the TOML comments per field."""
    name = row["name"]
    notes, comments = [_tidy(row["notes"])], {}
    dropped = []
    aliases = []
    seen = {normalize_name(name)}
    for alias in (a.strip() for a in row["aliases"].split(";")):
        if not alias or normalize_name(alias) in seen:  # same spelling up to case/spaces/dashes
            continue
        seen.add(normalize_name(alias))
        if alias in SHARED_CODENAMES or alias in FAMILY_ALIASES or alias in WRONG_ALIASES:
            dropped.append(alias)
        else:
            aliases.append(alias)
    usable_gib, basis = usable_memory(row)
    per_node, node_basis = gpus_per_node(row)
    comments["gpus_per_node"] = node_basis
    entry = {
        "name": name,
        "aliases": aliases,
        "vendor": "Intel" if row["vendor"].startswith("Intel") else row["vendor"],
        "architecture": row["architecture"] + (" (Habana)" if "Habana" in row["vendor"] else ""),
        "compute_capability": row["compute_capability"] or None,
        "memory_gb": float(row["memory_gb_nominal"]),
        "memory_usable_gib": usable_gib,  # exact: MiB/1024, x15/16 and x0.75 are binary fractions
        "memory_usable_basis": basis,
        "memory_type": row["memory_type"],
        "memory_kind": "unified" if row["vendor"] == "Apple" else "dedicated",
        "ecc": _flag(row["ecc"]),
        "memory_bandwidth_gbps": _number(row["mem_bandwidth_gbps"]),
        "fp32_tflops": _number(row["fp32_tflops"]),
        "tf32_tflops": _number(row["tf32_tflops_dense"]),
        "fp16_tflops": _number(row["fp16_tflops_dense"]),
        "bf16_tflops": _number(row["bf16_tflops_dense"]),
        "fp8_tflops": _number(row["fp8_tflops_dense"]),
        "int8_tops": _number(row["int8_tops_dense"]),
        "fp4_tflops": _number(row["fp4_tflops_dense"]),
        "supports_bf16": _flag(row["bf16_supported"]),
        "supports_fp8": _flag(row["fp8_supported"]),
        "supports_fp4": _number(row["fp4_tflops_dense"]) is not None,
        "supports_sparse_2_4": _flag(row["sparse_2_4_supported"]),
        "tdp_w": _number(row["tdp_w"]),
        "interconnect": row["interconnect"] or None,
        "form_factor": row["form_factor"] or None,
        "gpus_per_node": per_node,
        "release_year": int(row["release_year"]) if row["release_year"] else None,
        "launch_price_usd": _number(row["launch_msrp_usd"]),
        "cloud_usd_per_hour": _number(row["cloud_usd_per_hour"]),
        "cloud_provider": None,
        "cloud_price_date": None,
        "cloud_price_source": None,
        "source": _tidy(row["spec_source"]),
        "notes": "",
        "verified": True,
    }
    if entry["cloud_usd_per_hour"] is not None:
        entry["cloud_provider"], entry["cloud_price_date"] = CLOUD_PRICE[name]
        entry["cloud_price_source"] = _tidy(row["cloud_price_source"])
    for field, (value, reason) in CORRECTIONS.get(name, {}).items():
        notes.append(f"Catalog correction: {field} {entry[field]!r} -> {value!r} ({reason}).")
        entry[field] = value
    caveat = GEFORCE_DERIVED if "GeForce" in name else UNVERIFIED.get(name)
    if caveat:
        entry["verified"] = False
        notes.append(f"Caveat: {caveat}.")
    if dropped:
        notes.append("Aliases not kept (shared codename or ambiguous family name): " + ", ".join(dropped) + ".")
    notes.append(f"gpus_per_node {per_node}: {node_basis}.")
    entry["notes"] = " ".join(n for n in notes if n)
    return entry, comments


# ---------------------------------------------------------------------------------------------
# Checks beyond the schema (the schema already enforces flags vs TFLOPS and NVIDIA cc gates).


def check(entry: dict) -> list[str]:
    problems = []
    name = entry["name"]
    if entry["vendor"] == "NVIDIA":
        want = expected_cc(entry["architecture"])
        if entry["compute_capability"] != want:
            problems.append(f"{name}: cc {entry['compute_capability']} but {entry['architecture']} is {want}")
    bandwidth = entry["memory_bandwidth_gbps"]
    if bandwidth is not None and not 100 <= bandwidth <= 10_000:
        problems.append(f"{name}: bandwidth {bandwidth} GB/s outside 100..10000")
    peaks = [entry[f] for f in ("fp32_tflops", "tf32_tflops", "fp16_tflops", "bf16_tflops", "fp8_tflops",
                                "int8_tops", "fp4_tflops") if entry[f] is not None]
    if any(not 1 <= p <= 20_000 for p in peaks):
        problems.append(f"{name}: a TFLOPS value outside 1..20000 (unit error?)")
    if entry["fp32_tflops"] and entry["fp16_tflops"] and entry["fp16_tflops"] < entry["fp32_tflops"]:
        problems.append(f"{name}: fp16 below fp32")
    if entry["fp16_tflops"] and entry["bf16_tflops"] and entry["fp16_tflops"] != entry["bf16_tflops"]:
        print(f"  note: {name}: fp16 {entry['fp16_tflops']} != bf16 {entry['bf16_tflops']} (kept: sourced)")
    if entry["fp8_tflops"] and entry["bf16_tflops"] and entry["fp8_tflops"] < entry["bf16_tflops"]:
        problems.append(f"{name}: fp8 below bf16")
    if not 1 <= entry["memory_gb"] <= 1024:
        problems.append(f"{name}: memory {entry['memory_gb']} GB out of range")
    return problems


# ---------------------------------------------------------------------------------------------
# Writing TOML (by hand, to keep field order and a comment for the node-size rule)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r}")


def render(title: str, entries: list[tuple[dict, dict]]) -> str:
    lines = [
        f"# fitplan accelerator catalog: {title}.",
        "# Generated by scripts/gpu_specs_to_toml.py from the research gpu_specs.csv; the script records the",
        "# rules and corrections. Units are in the field names; TFLOPS are dense; an absent field is unknown",
        "# or not supported (never guessed). memory_usable_basis says how usable GiB was set.",
        "schema_version = 1",
    ]
    for entry, comments in entries:
        lines += ["", "[[accelerator]]"]
        for field, value in entry.items():
            if value is None:
                continue
            line = f"{field} = {_toml_value(value)}"
            if field in comments:
                line += f"  # {comments[field]}"
            lines.append(line)
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    csv_path = Path(argv[0]) if argv else DEFAULT_CSV
    out_dir = Path(argv[1]) if len(argv) > 1 else DEFAULT_OUT
    rows = read_rows(csv_path)
    by_file: dict[str, list[tuple[dict, dict]]] = {name: [] for name in FILES}
    problems = []
    for row in rows:
        entry, comments = convert(row)
        Accelerator.model_validate(entry)  # the runtime schema: flags vs TFLOPS, cc gates, units
        problems += check(entry)
        by_file[file_for(row)].append((entry, comments))
    if problems:
        print("\n".join(problems))
        return 1
    out_dir.mkdir(parents=True, exist_ok=True)
    for filename, entries in by_file.items():
        text = render(FILES[filename], entries)
        tomllib.loads(text)  # round-trip check
        (out_dir / filename).write_text(text, encoding="utf-8")
        print(f"{filename}: {len(entries)} entries")
    print(f"{len(rows)} rows -> {sum(len(e) for e in by_file.values())} entries")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
