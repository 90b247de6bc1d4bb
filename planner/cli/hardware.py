"""``fitplan hardware list`` and ``fitplan hardware show NAME``: browse the accelerator catalog.

``list`` prints a summary table (or every field with ``--json`` / ``--csv``); ``show`` prints every
field of one entry, unknown ones as "-", followed by the list of unknown facts. Both accept what
``hardware_db.get`` accepts, including capacity strings ("16GB").
"""

from __future__ import annotations

import argparse

from planner.render import add_format_flags, print_frame, print_json, print_mapping

# Summary table: schema field -> column header (units in the header, as in the field names).
LIST_COLUMNS = {
    "name": "name",
    "vendor": "vendor",
    "memory_gb": "memory GB",
    "memory_usable_gib": "usable GiB",
    "memory_bandwidth_gbps": "bandwidth GB/s",
    "bf16_tflops": "bf16 TFLOPS",
    "fp8_tflops": "fp8 TFLOPS",
    "compute_capability": "cc",
    "cloud_usd_per_hour": "$/h",
    "launch_price_usd": "launch $",
}
LIST_FORMATS = {
    "memory GB": "{:g}",
    "usable GiB": "{:.1f}",
    "bandwidth GB/s": "{:,.0f}",
    "bf16 TFLOPS": "{:,.1f}",
    "fp8 TFLOPS": "{:,.1f}",
    "$/h": "{:.2f}",
    "launch $": "{:,.0f}",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("hardware", help="browse the accelerator catalog",
                                   description="Browse the accelerator catalog (GPUs, TPUs, Gaudi, Apple).")
    commands = parser.add_subparsers(dest="hardware_command", metavar="{list,show,probe}")
    commands.required = True

    list_parser = commands.add_parser("list", help="list accelerators, optionally filtered")
    list_parser.add_argument("--vendor", help="only this vendor (case-insensitive), e.g. nvidia")
    list_parser.add_argument("--min-memory-gb", type=float, metavar="N", help="at least N GB marketed memory")
    list_parser.add_argument("--max-memory-gb", type=float, metavar="N", help="at most N GB marketed memory")
    add_format_flags(list_parser)
    list_parser.set_defaults(func=run_list, quick=True)  # see planner.cli.console_main

    show_parser = commands.add_parser("show", help="every field of one accelerator")
    show_parser.add_argument("name", metavar="NAME",
                             help='name, alias or capacity, e.g. "rtx 4090", "H100 SXM", "24GB"')
    add_format_flags(show_parser, csv=False)
    show_parser.set_defaults(func=run_show, quick=True)

    probe_parser = commands.add_parser("probe", help="measure this machine and print it as a catalog entry",
                                       description="Measure the host CPU (memory bandwidth, fp32/bf16/fp16 matmul "
                                                   "GFLOPS, cores, RAM) and any NVIDIA GPU; print the result as a "
                                                   "catalog entry (a user hardware file).")
    probe_parser.add_argument("--save", metavar="NAME_OR_PATH",
                              help="also save it: NAME goes to ~/.config/fitplan/hardware/NAME.toml (the entry is "
                                   "named NAME), a path ending in .toml is written as given; never overwrites")
    add_format_flags(probe_parser, csv=False)
    probe_parser.set_defaults(func=run_probe)


def run_list(args: argparse.Namespace) -> int:
    import hardware_db

    entries = hardware_db.list(vendor=args.vendor, min_memory_gb=args.min_memory_gb,
                               max_memory_gb=args.max_memory_gb)
    records = [entry.model_dump(mode="json") for entry in entries]
    if args.output == "json":
        print_json(records)
        return 0
    import pandas as pd

    if args.output == "csv":
        frame = pd.DataFrame(records, dtype=object)
        frame["aliases"] = frame["aliases"].map(";".join)
        print_frame(frame, "csv")
        return 0
    frame = pd.DataFrame(records, columns=list(LIST_COLUMNS)).rename(columns=LIST_COLUMNS)
    print_frame(frame, "table", title=f"Accelerators ({len(frame)})", formats=LIST_FORMATS,
                caption="TFLOPS are dense peaks; '-' = unknown or not supported. "
                        "Details: fitplan hardware show NAME")
    return 0


def run_show(args: argparse.Namespace) -> int:
    import hardware_db

    entry = hardware_db.get(args.name)
    payload = entry.model_dump(mode="json")
    missing = entry.missing_fields()
    if args.output == "json":
        print_json({**payload, "missing_fields": missing})
        return 0
    print_mapping(entry.name, [(field, _raw(value)) for field, value in payload.items()], "table")
    print("unknown: " + (", ".join(missing) if missing else "none"))
    return 0


def _raw(value: object) -> object:
    """Numbers as stored (2023, 44.9883), not with the table's thousands separators and rounding."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def run_probe(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hardware_db.probe import entry_toml, host_entry, probe_host, save_entry, write_cache

    probe = probe_host()
    name = Path(args.save).stem if args.save else None
    entry = host_entry(probe, name)
    write_cache(host_entry(probe))  # what `fitplan run` predicts CPU latency with
    if args.output == "json":
        print_json({**entry.model_dump(mode="json"), "nvidia_gpus": probe.gpus})
    else:
        print(entry_toml(entry), end="")
    if probe.gpus:
        import hardware_db

        for gpu in probe.gpus:
            try:
                print(f"# NVIDIA GPU {gpu!r}: catalog entry {hardware_db.get(gpu).name!r}")
            except hardware_db.CatalogError:
                print(f"# NVIDIA GPU {gpu!r}: not in the catalog (add it to a user hardware file)")
    if args.save:
        path = save_entry(entry, args.save)
        print(f"# saved to {path}; use it with FITPLAN_HARDWARE={path.parent} and --gpu {entry.name!r}")
    return 0
