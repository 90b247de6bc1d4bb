"""The memory benchmark's flagged rows name real rows of its data files (a typo would flag nothing)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_every_flag_names_a_published_row_and_gives_a_reason():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import more_rows
    finally:
        sys.path.remove(str(BENCHMARKS))
    ids = set(pd.read_csv(more_rows.MORE_CSV)["id"]) | set(
        pd.read_csv(BENCHMARKS / "data" / "public_memory_measurements.csv")["id"])
    assert more_rows.ROW_FLAGS
    for row_id, reason in more_rows.ROW_FLAGS.items():
        assert row_id in ids, row_id
        assert len(reason) > 40 and more_rows.flag_of(row_id) == reason
    assert more_rows.flag_of("not-a-row") == ""


def test_fit_rows_compare_with_the_catalog_capacity_of_the_rows_gpu():
    """Both sets read the GPU's usable capacity from the catalog (T4: what CUDA reports, not the 15.0 the
    first set's '<15.0' transcribes), and a GPU the catalog lacks by its printed size."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import training_rows
    finally:
        sys.path.remove(str(BENCHMARKS))
    import hardware_db

    t4 = hardware_db.get("T4").memory_usable_gib
    assert training_rows.capacity_gib("NVIDIA T4 16GB x1") == training_rows.capacity_gib("T4 16GB") == t4 == 14.75
    assert training_rows.capacity_gib("RTX 3090 24GB (23.70 GiB total capacity)") == 23.70
    assert training_rows.capacity_gib("Some Card 12GB") == 12.0
    assert training_rows.capacity_gib("unknown") is None
