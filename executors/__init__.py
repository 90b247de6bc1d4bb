"""Real runs of compression strategies (quantize, prune, distill, low-rank) and their measurement.

Needs the ``exec`` extra (torch, transformers, bitsandbytes): ``pip install ".[exec]"`` from a checkout.
Importing this package stays light: torch is imported only when something runs (the names below
are loaded on first access).

- :func:`execute` (``executors.run``): apply a strategy to a model directory, measure it in an
  isolated process, return an :class:`ExecutionResult` with the planner's predictions alongside;
- evaluators (``executors.evaluate``): perplexity, fidelity, accuracy, any callable;
- :func:`ensure_tiny_llm` / :func:`ensure_test_llm` / :func:`minilm_dir` (``executors.fixtures``): the
  benchmark and test models;
- :func:`read_texts` (``executors.datafiles``): the user's evaluation / calibration data files;
- :func:`profile` (``executors.profiling``): the model's measured per-block sensitivity profile, which
  the planner reads (``predict_quality(..., profile=...)``);
- :func:`export_model` (``executors.export``): a run's compressed model as a directory that
  ``from_pretrained`` reloads, with a model card;
- :func:`run_isolated` (``executors.isolation``): run any importable function in a capped process.
"""

from __future__ import annotations

from planner._lazy import lazy_getattr

_LAZY = {
    "execute": "executors.run",
    "ExecutionResult": "executors.result",
    "ensure_tiny_llm": "executors.fixtures",
    "ensure_test_llm": "executors.fixtures",
    "read_texts": "executors.datafiles",
    "minilm_dir": "executors.fixtures",
    "run_isolated": "executors.isolation",
    "load_model": "executors.loading",
    "PerplexityEvaluator": "executors.evaluate",
    "FidelityEvaluator": "executors.evaluate",
    "AccuracyEvaluator": "executors.evaluate",
    "CallableEvaluator": "executors.evaluate",
    "load_corpus": "executors.corpus",
    "profile": "executors.profiling",
    "run_profile": "executors.profiling",
    "export_model": "executors.export",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr("executors", _LAZY, globals())
