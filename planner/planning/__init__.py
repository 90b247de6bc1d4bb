"""The constraint planner: ``Constraints`` in, a ranked and explained ``Plan`` out.

- :mod:`constraints`: what the user requires (limits, hardware, workload, deployment presets);
- :mod:`grid`: the strategies the hardware runs; :mod:`sparse_storage`: bytes of sparse weights;
- :mod:`estimates`: the one door to the memory/speed/cost estimator;
- :mod:`candidate`: one strategy evaluated (:func:`evaluate_candidate`, used by ``fitplan search``);
- :mod:`plan`: :func:`plan` ranks the grid, finds the Pareto front, recommends, explains misses;
- :mod:`flags`: the command-line flags of a ``Constraints`` (shared by ``fitplan plan`` and ``search``).
"""

from planner.planning.candidate import Candidate, Violation, evaluate_candidate
from planner.planning.constraints import DEPLOYMENT_TARGETS, OBJECTIVES, Constraints, deployment_targets
from planner.planning.grid import Grid
from planner.planning.plan import TABLE_COLUMNS, MissedCandidate, Plan, plan

__all__ = ["Candidate", "Constraints", "DEPLOYMENT_TARGETS", "Grid", "MissedCandidate", "OBJECTIVES", "Plan",
           "TABLE_COLUMNS", "Violation", "deployment_targets", "evaluate_candidate", "plan"]
