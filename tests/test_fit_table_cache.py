"""The on-disk copy of what_fits' GPU-independent table (planner.sizing.table_cache) gives the same
numbers, bit for bit, as computing them; corrupt, foreign or stale entries are rebuilt; an unwritable
cache is ignored. And the per-row decode inputs stored with a table are the speed model's own figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from planner.sizing import fits, table, table_cache, what_fits

SOME = ["llama-3.1-8b", "mixtral-8x7b", "gpt-oss-20b", "qwen2.5-7b-instruct", "deepseek-v3", "gemma-2-9b",
        "phi-3-mini-4k-instruct", "falcon-7b", "mistral-7b", "bert-base-uncased"]
REQUESTS = [
    dict(gpu=["RTX 4090", "16GB", "H100 SXM", "T4"]),  # the whole registry, checkpoint formats included
    dict(gpu=["A100 80GB", "24GB"], models=SOME, engine="vllm", gpus=2, context=32768, batch=4),
    dict(gpu="RTX 3090", models=SOME, engine="llamacpp", context=8192),
    dict(gpu="L4", models=SOME, engine="vllm", precisions=["bf16", "fp8", "awq-int4"], kv_dtype="fp8", context=2048),
]


def _clear_memory() -> None:
    fits._fits_table.cache_clear()
    table._cached_table.cache_clear()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FITPLAN_CACHE", str(tmp_path))
    monkeypatch.delenv(table_cache.SWITCH_ENV, raising=False)
    _clear_memory()
    yield tmp_path / "fit-tables"
    _clear_memory()


def _computed(monkeypatch, request: dict) -> pd.DataFrame:
    monkeypatch.setenv(table_cache.SWITCH_ENV, "off")
    _clear_memory()
    frame = what_fits(**request)
    monkeypatch.delenv(table_cache.SWITCH_ENV)
    _clear_memory()
    return frame


def _no_build(*args, **kwargs):
    raise AssertionError("the table was rebuilt instead of read from the disk cache")


@pytest.mark.parametrize("request_", REQUESTS, ids=["registry", "vllm-tp2", "llamacpp", "kv-fp8"])
def test_stored_table_gives_identical_rows(cache, monkeypatch, request_):
    computed = _computed(monkeypatch, request_)
    first = what_fits(**request_)  # computes and stores
    assert len(list(cache.glob("*.npz"))) == 1
    _clear_memory()
    monkeypatch.setattr(fits, "_cached_table", _no_build)
    loaded = what_fits(**request_)  # read back from disk
    for frame in (first, loaded):
        pd.testing.assert_frame_equal(frame, computed, check_exact=True)
    assert computed["fits"].any() and (~computed["fits"]).any()
    assert computed["decode_tok_s"].notna().any()


def test_corrupt_foreign_and_stale_entries_are_rebuilt(cache, monkeypatch):
    small = dict(gpu="RTX 4090", models=SOME[:4], context=4096)
    other = dict(gpu="RTX 4090", models=SOME[:4], context=8192)
    expected = _computed(monkeypatch, small)
    what_fits(**small)
    what_fits(**other)
    files = sorted(cache.glob("*.npz"), key=lambda p: p.stat().st_mtime_ns)
    assert len(files) == 2
    small_file, other_file = files

    builds = []
    real = fits._cached_table

    def counting(*args, **kwargs):
        builds.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(fits, "_cached_table", counting)
    for damage in (b"not a zip file", small_file.read_bytes()[:1000], other_file.read_bytes()):
        small_file.write_bytes(damage)  # garbage, truncated, another request's entry
        _clear_memory()
        pd.testing.assert_frame_equal(what_fits(**small), expected, check_exact=True)
    assert len(builds) == 3
    _clear_memory()
    pd.testing.assert_frame_equal(what_fits(**small), expected, check_exact=True)  # rewritten: read back
    assert len(builds) == 3

    # Another version of the code or data (its fingerprint) never reads this entry.
    monkeypatch.setattr(table_cache, "code_fingerprint", lambda: "another version")
    _clear_memory()
    pd.testing.assert_frame_equal(what_fits(**small), expected, check_exact=True)
    assert len(builds) == 4


def test_unwritable_cache_is_ignored(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("FITPLAN_CACHE", str(blocker))
    request = dict(gpu="16GB", models=SOME[:3])
    _clear_memory()
    frame = what_fits(**request)
    pd.testing.assert_frame_equal(frame, _computed(monkeypatch, request), check_exact=True)
    assert list(tmp_path.iterdir()) == [blocker]


def test_fingerprint_covers_code_and_data():
    from pathlib import Path

    import planner

    root = Path(planner.__file__).parent
    assert len(table_cache.code_fingerprint()) == 64
    assert (root / "data" / "formats.toml").is_file() and (root / "memory" / "weights.py").is_file()


def test_decode_inputs_are_the_speed_models_figures():
    """``FitTable.decode`` (stored with the table) equals the speed model computed from each row's plan."""
    from planner.speed.model import moe_experts_run
    from planner.speed.roofline import decode_step_flops

    context, batch = 8192, 3
    built = table.build_table([fits.get_model(m) for m in SOME], ("bf16", "nf4", "gptq-int4"), engine="vllm",
                              kv_dtype=None, context=context, batch=batch, gpus=2)
    rows = 0
    for r, (prepared, reads) in enumerate(zip(built.prepared, built.reads)):
        got = {name: built.decode[name][r] for name in table.DECODE_INPUTS}
        if prepared is None:
            assert np.isnan(got["weight_read"]) and got["layers"] == 0
            continue
        spec, tp = prepared.setup.spec, prepared.setup.tp
        flops = decode_step_flops(spec, context, batch).split(tp)
        assert (got["tp"], got["pp"]) == (tp, prepared.setup.pp)
        assert got["weight_read"] == reads.at(batch)
        assert (got["linear_flops"], got["attention_flops"]) == (flops.linear, flops.attention)
        assert got["layers"] == spec.total_layers
        assert got["experts_run"] == moe_experts_run(spec, batch)
        rows += 1
    assert rows >= 15
    assert (built.decode["tp"] == 2).any()


def test_local_path_named_like_a_model_is_not_served_from_the_cache(cache, tmp_path, monkeypatch):
    """get_model reads a local directory before the registry, so such a sweep is computed, not read back."""
    import json

    from planner.models.registry import get_entry

    local = tmp_path / "work" / "mistralai" / "Mistral-7B-v0.1"
    local.mkdir(parents=True)
    (local / "config.json").write_text(json.dumps(get_entry("llama-3.1-8b").config))
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setattr(table_cache, "cached", _no_build)
    frame = what_fits("RTX 4090", precisions=["bf16"])
    rows = frame.set_index("model")["safe_gib"]
    assert rows["mistralai/Mistral-7B-v0.1"] == rows["meta-llama/Llama-3.1-8B"]


def test_cache_keeps_the_newest_entries(cache, monkeypatch):
    monkeypatch.setattr(table_cache, "MAX_ENTRIES", 2)
    for context in (1024, 2048, 4096):
        what_fits("16GB", models=SOME[:2], precisions=["bf16"], context=context)
    assert len(list(cache.glob("*.npz"))) == 2
    assert not list(cache.glob("*.tmp"))


def test_no_home_directory_means_no_cache(monkeypatch):
    from pathlib import Path

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("FITPLAN_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    _clear_memory()
    request = dict(gpu="16GB", models=SOME[:2])
    pd.testing.assert_frame_equal(what_fits(**request), _computed(monkeypatch, request), check_exact=True)
    _clear_memory()
