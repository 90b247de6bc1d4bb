"""Search over compression strategies (quantization x sparsity x distillation) with Optuna.

Works without torch. The public entry is :func:`run_search` (``search.run``): an Optuna multi-objective
search whose trials are strategies scored by the planner's predictions, stored in an Optuna study
(in memory, a SQLite file, or PostgreSQL shared by several processes), returned as a
:class:`SearchResult` (ranked trade-off table, Pareto front, plots). With ``execute_top=K`` it is the
closed loop (``search.loop``): K candidates per round executed for real, the predictor refined from
them, every strategy re-scored, predictor quality per round (:class:`RoundReport`). :class:`SearchSpace`
(``search.space``) is the typed, editable space; ``fitplan search`` / ``fitplan results`` are its
commands (``search.commands``, registered through ``search.cli``).
"""

from __future__ import annotations

from planner._lazy import lazy_getattr

_LAZY = {
    "run_search": "search.run",
    "select_candidates": "search.loop",
    "RoundReport": "search.measured",
    "MeasuredCandidate": "search.measured",
    "SearchResult": "search.results",
    "result_from_study": "search.results",
    "SearchSpace": "search.space",
    "default_space": "search.space",
    "OBJECTIVES": "search.objective",
    "execute_jobs": "search.execution",
    "run_worker": "search.execution",
    "ExecutionJob": "search.execution",
    "Measurement": "search.execution",
}

__all__ = sorted(_LAZY)

__getattr__ = lazy_getattr("search", _LAZY, globals())
