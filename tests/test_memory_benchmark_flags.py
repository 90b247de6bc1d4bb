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
