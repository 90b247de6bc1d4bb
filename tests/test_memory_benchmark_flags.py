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


def test_rows_in_both_sets_are_one_measurement_and_counted_once():
    """Every merged pair is checked field by field (document, model, batch, seq, setup, value/outcome); a
    wrong pair raises; the totals drop the first-set copy."""
    import pytest

    sys.path.insert(0, str(BENCHMARKS))
    try:
        import more_rows
        import same_measurements
    finally:
        sys.path.remove(str(BENCHMARKS))
    first = pd.read_csv(BENCHMARKS / "data" / "public_memory_measurements.csv")
    second = pd.read_csv(more_rows.MORE_CSV)
    lines = same_measurements.check_same(first, second)
    assert len(lines) == len(same_measurements.SAME) == 13
    assert "HFT-02 = M-transformers_docs_perf_train-003" in lines[0] and "14.599 GiB" in lines[0]
    both = pd.DataFrame({"id": ["HFT-02", "HFT-01", "M-transformers_docs_perf_train-003"]})
    assert list(same_measurements.once(both)["id"]) == ["HFT-01", "M-transformers_docs_perf_train-003"]
    wrong = dict(same_measurements.SAME)
    try:  # NF4 no-GC 512 (BNB-01) is not the FP4 run of the same length (q-004), nor HFT-03 the batch-4 run
        same_measurements.SAME = {"BNB-01": "M-hf_blog_4bit_bitsandbytes__q-004"}
        with pytest.raises(ValueError, match="setup"):
            same_measurements.check_same(first, second)
        same_measurements.SAME = {"HFT-03": "M-transformers_docs_perf_train-003"}
        with pytest.raises(ValueError, match="batch"):
            same_measurements.check_same(first, second)
    finally:
        same_measurements.SAME = wrong
