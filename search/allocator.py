"""Per-block format allocation from a sensitivity profile: an exact multiple-choice knapsack.

How the search is split when a profile of the model exists:

- **Optuna samples the global knobs**: a *weight budget* (average stored bits per block weight, from
  ``SearchSpace.bit_budgets``) instead of one weight format, plus sparsity, distillation, KV dtype and
  the rest. Sampling a format for each of the 2 x L (block, group) pairs would make the space
  astronomically large (6 formats, 32 blocks: 6^64 points) and the sampler would learn almost nothing.
- **Inside each trial the allocator picks the per-block formats exactly**: for every (block, group) of
  the profile, choose one format among the space's formats that the profile measured, minimising the
  summed damage ``-ln(retained / 100)`` (the profile's additive estimate, what the accuracy model sums)
  subject to the stored bytes of those weights staying within the budget. This is a multiple-choice
  knapsack, solved by dynamic programming over the budget discretised in ``RESOLUTION`` steps (the
  rounding only ever makes an allocation cheaper than its budget allows, never over it).

The result is a ``QuantizationSpec`` whose ``weights`` is the most used format and whose
``block_formats`` (strategy version 2) hold the other choices; the planner sizes and predicts it like
any strategy. Bytes per (block, group) come from the format registry (``planner.formats.storage``), so
the budget is in the same bytes the memory model counts.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from planner.errors import InvalidRequestError

if TYPE_CHECKING:
    from planner.accuracy.profile import SensitivityProfile
    from planner.models.spec import ModelSpec

RESOLUTION = 2000
GROUPS = ("attention", "mlp")


@dataclass(frozen=True)
class Allocation:
    """The chosen format of each (block, group), its bytes and its predicted damage."""

    formats: dict[tuple[int, str], str]
    bytes: float
    budget_bytes: float
    damage: float

    @property
    def main_format(self) -> str:
        return Counter(self.formats.values()).most_common(1)[0][0]


class BlockAllocator:
    """Solves the per-block knapsack for one model, profile and set of formats (reused by every trial)."""

    def __init__(self, spec: "ModelSpec", profile: "SensitivityProfile", formats: tuple[str, ...]):
        from planner.formats import get_format
        from planner.formats.storage import group_storage

        if profile.model.num_blocks != spec.num_layers:
            raise InvalidRequestError(f"the profile has {profile.model.num_blocks} blocks, {spec.name} has "
                                      f"{spec.num_layers}: it was measured on another model.")
        measured = [f for f in formats if any(profile.effect(0, g, f) is not None for g in GROUPS)]
        if not measured:
            raise InvalidRequestError("the profile measured none of the space's weight formats "
                                      f"({', '.join(formats)}); profile options: {', '.join(sorted(profile.options))}.")
        self.formats = tuple(measured)
        self.items: list[tuple[int, str]] = []
        costs, damages = [], []
        per_block: dict[str, dict[str, float]] = {}
        for fmt in self.formats:
            weight_format = get_format(fmt)
            per_block[fmt] = {g: 0.0 for g in GROUPS}
            for group in spec.param_groups:
                if group.component in GROUPS and group.layers:
                    per_block[fmt][group.component] += group_storage(spec, weight_format, group).bytes / len(group.layers)
        for block in range(spec.num_layers):
            for group in GROUPS:
                row_cost, row_damage = [], []
                for fmt in self.formats:
                    retained = profile.effect(block, group, fmt)
                    row_cost.append(per_block[fmt][group])
                    row_damage.append(math.inf if retained is None or retained <= 0
                                      else -math.log(min(retained, 100.0) / 100.0))
                if any(c > 0 for c in row_cost):
                    self.items.append((block, group))
                    costs.append(row_cost)
                    damages.append(row_damage)
        self.costs = np.array(costs)  # (items, formats) bytes
        self.damages = np.array(damages)  # (items, formats) damage; inf = not measured
        self.weights_count = sum(g.params for g in spec.param_groups if g.component in GROUPS and g.layers)

    def min_bits(self) -> float:
        """The smallest average stored bits per block weight any allocation reaches (every group in its
        cheapest measured format): a smaller budget has no allocation."""
        return float(self.costs.min(axis=1).sum()) * 8.0 / self.weights_count

    def bytes_for_bits(self, bits: float) -> float:
        """The byte budget of an average of ``bits`` stored bits per block weight."""
        return self.weights_count * bits / 8.0

    def allocate(self, budget_bytes: float) -> Allocation | None:
        """The least-damage choice within ``budget_bytes`` (None when even the smallest choice exceeds it)."""
        cheapest = self.costs.min(axis=1).sum()
        if budget_bytes < cheapest:
            return None
        unit = budget_bytes / RESOLUTION
        units = np.ceil(self.costs / unit).astype(int)  # rounding up: never over the budget
        n_items = len(self.items)
        best = np.full(RESOLUTION + 1, math.inf)
        best[0] = 0.0
        choice = np.zeros((n_items, RESOLUTION + 1), dtype=np.int16)
        for i in range(n_items):
            new = np.full(RESOLUTION + 1, math.inf)
            pick = np.zeros(RESOLUTION + 1, dtype=np.int16)
            for k in range(len(self.formats)):
                w, d = units[i, k], self.damages[i, k]
                if not math.isfinite(d) or w > RESOLUTION:
                    continue
                shifted = np.full(RESOLUTION + 1, math.inf)
                shifted[w:] = best[:RESOLUTION + 1 - w] + d
                better = shifted < new
                new[better] = shifted[better]
                pick[better] = k
            best, choice[i] = new, pick
        end = int(np.argmin(best))
        if not math.isfinite(best[end]):
            return None
        formats, total = {}, 0.0
        for i in range(n_items - 1, -1, -1):
            k = int(choice[i, end])
            formats[self.items[i]] = self.formats[k]
            total += self.costs[i, k]
            end -= units[i, k]
        return Allocation(formats=formats, bytes=total, budget_bytes=budget_bytes, damage=float(best.min()))

    def quantization(self, allocation: Allocation, **fields) -> "object":
        """A QuantizationSpec applying ``allocation`` (other fields, e.g. kv_cache, passed through)."""
        from planner.strategy import BlockFormat, QuantizationSpec

        main = allocation.main_format
        overrides = tuple(BlockFormat(block=b, group=g, format=f)
                          for (b, g), f in sorted(allocation.formats.items()) if f != main)
        return QuantizationSpec(weights=main, block_formats=overrides, **fields)
