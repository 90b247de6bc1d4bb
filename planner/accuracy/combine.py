"""The combination rule: how the effects of stacked strategy parts add up.

Each part ``i`` has a latent damage ``d_i`` (log-perplexity units) that is lognormal with median
``exp(mu_i)`` and log-spread ``s_i``. The parts add in log-quality (quality retained multiplies):

    D = sum_i d_i + gamma * sum_{i<j} sqrt(d_i * d_j)          (interaction term)
    retained = 100 * exp(-scale * D)

The sum of lognormals is matched to one lognormal (Fenton-Wilkinson: same mean and variance), and each
pair of stacked parts widens its log-spread by ``sigma_per_pair`` (added in quadrature): the literature
shows additivity only holds approximately (EvoPress ICML'25; ModelOpt AutoQuantize's "combinatorial
effects"), so stacked techniques get a wider interval than any of their parts. ``gamma`` and
``sigma_per_pair`` are in ``accuracy_priors.toml`` ``[techniques.interaction]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from planner.accuracy.priors import Z80


@dataclass(frozen=True)
class Damage:
    """A lognormal latent damage: median exp(mu), log-spread s (0 = exact)."""

    mu: float
    s: float

    @property
    def median(self) -> float:
        return math.exp(self.mu)

    def quantile(self, z: float) -> float:
        return math.exp(self.mu + z * self.s)


@dataclass(frozen=True)
class Combined:
    median: float
    low: float
    high: float
    interaction: float = 0.0
    """damage added by the interaction term (median)"""


def combine(parts: list[Damage], gamma: float, sigma_per_pair: float) -> Combined:
    """Median and 80% range of the total damage of these parts (see the module docstring)."""
    if not parts:
        return Combined(0.0, 0.0, 0.0)
    if len(parts) == 1:
        p = parts[0]
        return Combined(p.median, p.quantile(-Z80), p.quantile(Z80))
    mean = sum(math.exp(p.mu + p.s * p.s / 2) for p in parts)
    var = sum(math.exp(2 * p.mu + p.s * p.s) * (math.exp(p.s * p.s) - 1) for p in parts)
    medians = [p.median for p in parts]
    interaction = gamma * sum(math.sqrt(medians[i] * medians[j])
                              for i in range(len(parts)) for j in range(i + 1, len(parts)))
    pairs = len(parts) * (len(parts) - 1) / 2
    s2 = math.log1p(var / (mean * mean)) + pairs * sigma_per_pair ** 2
    mu = math.log(mean + interaction) - math.log1p(var / (mean * mean)) / 2
    s = math.sqrt(s2)
    return Combined(math.exp(mu), math.exp(mu - Z80 * s), math.exp(mu + Z80 * s), interaction)
