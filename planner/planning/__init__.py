"""The constraint planner: ``Constraints`` in, a ranked and explained ``Plan`` out.

- :mod:`constraints`: what the user requires (limits, hardware, workload, deployment presets);
- :mod:`grid`: the strategies the hardware runs; :mod:`sparse_storage`: bytes of sparse weights;
- :mod:`estimates`: the one door to the memory/speed/cost estimator;
- :mod:`candidate`: one strategy evaluated (:func:`evaluate_candidate`, used by ``fitplan search``);
- :mod:`plan`: :func:`plan` ranks the grid, finds the Pareto front, recommends, explains misses;
- :mod:`flags`: the command-line flags of a ``Constraints`` (shared by ``fitplan plan`` and ``search``).
"""

from planner._lazy import lazy_getattr

# Imported on first use: `fitplan` builds the plan command's flags (planner.planning.flags) for every
# command line, and that must not pay for numpy, pandas or the estimator.
_LAZY = {
    "Candidate": "planner.planning.candidate", "Violation": "planner.planning.candidate",
    "evaluate_candidate": "planner.planning.candidate",
    "Constraints": "planner.planning.constraints", "DEPLOYMENT_TARGETS": "planner.planning.constraints",
    "OBJECTIVES": "planner.planning.constraints", "deployment_targets": "planner.planning.constraints",
    "Grid": "planner.planning.grid", "compare_formats": "planner.planning.compare",
    "TABLE_COLUMNS": "planner.planning.plan", "MissedCandidate": "planner.planning.plan",
    "Plan": "planner.planning.plan", "plan": "planner.planning.plan:plan",
}

__all__ = ["Candidate", "Constraints", "DEPLOYMENT_TARGETS", "Grid", "MissedCandidate", "OBJECTIVES", "Plan",
           "TABLE_COLUMNS", "Violation", "compare_formats", "deployment_targets", "evaluate_candidate", "plan"]

__getattr__ = lazy_getattr("planner.planning", _LAZY, globals())
