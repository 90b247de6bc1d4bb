"""Refuse, before any work, a strategy the model cannot take (no torch: reads config.json only).

A structural step (heads, FFN channels, layers, a derived student) rewrites the model's config, so it
needs the planner's description of the family and a family whose config can describe the result
(:func:`planner.models.derive.structural_refusal`), and it must remove at least one unit. These are
checked here, from config.json, so ``fitplan run`` refuses with one clear line instead of failing after
loading the model and computing its baseline. Everything else (quantization, unstructured/N:M pruning,
low-rank) runs on any model, including one whose ``model_type`` the planner cannot describe.
"""

from __future__ import annotations

import os
from pathlib import Path

from planner.errors import FitplanError, UnsupportedError
from planner.strategy import CompressionStrategy


def needs_model_spec(strategy: CompressionStrategy) -> str | None:
    """What in ``strategy`` rewrites the model's structure (None: nothing does)."""
    distill = strategy.distillation
    if distill is not None and distill.student is None:
        return "a derived student"
    sparsity = strategy.sparsity
    if sparsity is not None and sparsity.structured:
        return {"heads": "attention-head pruning", "ffn": "FFN-channel pruning",
                "layers": "whole-layer pruning"}[sparsity.pattern]
    return None


def check_strategy(model_dir: str | os.PathLike, strategy: CompressionStrategy) -> None:
    """Raise a FitplanError when ``strategy`` cannot be applied to the model in ``model_dir`` (a part the
    executors cannot apply is refused, never skipped: a run must not report what it did not do)."""
    q = strategy.quantization
    if q is not None and q.kv_cache is not None:
        from planner.execution import KV_CACHE_REASON

        raise UnsupportedError(f"kv_cache {q.kv_cache!r}: {KV_CACHE_REASON}. Remove kv_cache from the strategy (the "
                               f"planner still predicts it for a serving engine).")
    what = needs_model_spec(strategy)
    if what is None:
        return
    from executors.loading import read_config
    from planner.models.derive import derive_spec
    from planner.models.spec import ModelSpec

    config = read_config(model_dir)
    try:
        spec = ModelSpec.from_config(config, name=Path(model_dir).name, source=str(model_dir))
    except FitplanError as error:
        raise UnsupportedError(f"{what} rewrites the model's config and needs the planner's description of "
                               f"model_type {config.get('model_type')!r}, which it does not have ({error}). "
                               f"Quantization, unstructured/N:M pruning and low-rank run on any model.") from None
    derive_spec(spec, strategy)  # raises for a family that cannot be cut so, or a step that removes nothing
