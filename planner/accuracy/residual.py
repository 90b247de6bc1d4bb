"""The quality residual model: how far measured damage sits from the base prediction, per technique.

For one model family (records of models within ``SIZE_FACTOR`` of the predicted model's size), each part
``p`` of a strategy, of technique ``t``, predicted on basis ``b`` (``prior``: the published rules;
``profile``: this model's sensitivity profile) has its log-damage corrected by

    ln d_p  ->  ln d_p + g_b + phi_t(p) . w_{t,b}

``g_b`` is the family-wide offset shared by every technique on the **prior** basis (a model that
quantization hurts less than the published models is usually more robust to pruning too: hierarchical
pooling), and ``w_{t,b}`` the technique's own deviation from it. A technique without any record of its own
is corrected by ``g_b`` alone, its own coefficients adding their prior variance to the interval (a note says
so). The **profile** basis has no ``g_b`` (:data:`POOLED_BASES`): the profile has measured this very model
option by option, so what remains of its error belongs to the measurement a part comes from, not to the
family; a profile part of a technique without records stays as measured. With a shared profile offset the
closed loop's first round (near-lossless quantization records) moved the tiny causal LM's heads and
layers predictions by 2-6 points (held-out MAE 0.64 -> 1.80 points; without it 0.64 -> 0.65). Structural
profile parts are keyed by what the profile measured (:func:`block_technique`).

``phi_t`` are the part's strategy features (an intercept first; one unit spans the usual range):

- quantization: bits ``(b - 4) / 4``, group size ``log2(g / 128) / 3`` (per-channel counts as 1024), one
  indicator per method of ``accuracy_priors.toml`` (nf, hqq, gptq, llm_int8, ...; round-to-nearest is
  the reference), averaged over the formats the part stores, weighted by share x prior damage (the most
  damaging format dominates, as it dominates the part's damage);
- sparsity (unstructured, N:M): ``logit(level)``, N:M indicator, method indicators (magnitude,
  sparsegpt; wanda is the reference), recovery ``ln(1 + T/N) / 5`` (fine-tuning tokens per parameter);
- structure (distillation, heads / ffn / layers pruning): the removed fraction of depth (layers), MLP
  width, heads, ffn, of a named student's parameters, and the recovery ``ln(1 + T/N) / 5``;
- low_rank: removed rank fraction ``1 - rank_ratio``, indicators of ``mlp`` / ``attention`` targets.

All ``g_b`` and ``w_{t,b}`` of a family are the coefficients of one Bayesian linear model (:mod:`.bayes`:
unknown noise, Student-t prior with ``PRIOR_TAIL_DOF`` = 2 degrees of freedom on each coefficient),
centred on zero residual (the base prediction). Prior scales: ``SHARED_SCALE`` = 1 for ``g_b``;
``tau = sqrt(max(s^2 - sigma0^2, sigma0^2))`` for a technique's intercept and ``tau / 2`` per unit of each
other feature, ``s`` being the base's own log-spread (the rule's residual scatter for the prior, i.e. the
between-model spread of published results; ``PROFILE_SIGMA`` for a profile); the noise ``sigma0 =
RESIDUAL_NOISE``, worth ``NOISE_DOF`` = 4 observations. The heavy tails matter: a Gaussian prior of that
scale keeps pulling a model far outside the published data back to the priors (the tiny causal LM, which
2-bit quantization barely hurts: see ``benchmarks/calibration_refine.py``). A corrected part's log-spread
is the predictive t at its features expressed as a normal spread
(:meth:`.bayes.Posterior.normal_spread`), never wider than the uncorrected part's (far from every
measurement the base interval still holds).

Targets. Each record's measured damage ``M`` (latent units: ``-ln(retained/100) / scale`` of its metric
family) is compared with the combined damage ``D`` of its base parts, computed
as ``predict_quality`` computes them today (the record's model's facts; the profile when it is of that
model): a later change of the priors or a new profile re-bases every record, and a record whose stored
prediction already included a correction is never corrected twice.

Stacked records (several techniques) are fitted jointly on the sum instead of being dropped: the
combination rule gives ``ln D(f)`` with every part's log-damage shifted by ``f_p = g_b + phi(p) . w``;
linearised at the current estimate (Gauss-Newton, ``GAUSS_NEWTON_PASSES`` passes),
``ln M ~ ln D(f0) + sum_p c_p (f_p - f0_p)`` with ``c_p = d ln D / d ln d_p``, the part's share of the
predicted total (``sum c_p = 1`` by Euler's theorem: D, interaction term included, is homogeneous of
degree 1 in the parts' damages). So a stacked record informs each technique in proportion to its share
of the predicted damage, and the joint posterior keeps what it cannot tell apart (correlated
coefficients) in the intervals, rather than pretending one technique alone was off. A single-technique
record is exact (``c = 1``).

Resolution. ``r`` = ``MEASUREMENT_NOISE_PP`` points of the retained % in latent units. A record compares
``ln(M + r)`` with ``ln(D + r)`` (slope ``c_p D / (D + r)``), not two floors: a near-lossless measurement
(even a measured gain) against a near-lossless prediction says "both about zero" and moves nothing, where
``ln max(M, r) - ln D`` with the prediction's smaller floor read it as ten times the damage (a few such
records of the closed loop pulled every correction the wrong way). Its known variance, added to the fitted
noise: ``(r / (M + r))^2 + pairs * sigma_pair^2`` (a near-lossless measurement says little about the exact
log-ratio, as the priors weigh rounded rows), ``pairs`` the stacked pairs of the record and
``sigma_pair`` the combination rule's widening per pair (``accuracy_priors.toml`` [techniques.interaction]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from planner.accuracy import bayes
from planner.accuracy.combine import Damage, combine
from planner.accuracy.parts import ModelFacts, PartDamage, format_damage, format_shares
from planner.accuracy.priors import Z80, Priors, t90
from planner.accuracy.profile import PROFILE_SIGMA

RESIDUAL_NOISE = 0.25
"""sigma0: prior scale of a measurement's log-damage around the family's residual function (evaluation on
a small calibration set and what the linear features miss); the data re-estimate it."""
NOISE_DOF = 4.0
"""the prior noise scale counts as this many observations"""
PRIOR_TAIL_DOF = 2.0
"""degrees of freedom of the Student-t prior on each coefficient (heavy tails: see :mod:`.bayes`)"""
SLOPE_SCALE = 0.5
"""prior sd of a non-intercept coefficient per unit feature, as a share of the intercept's"""
MEASUREMENT_NOISE_PP = 0.1
"""resolution of a measured retained %, percentage points"""
GAUSS_NEWTON_PASSES = 3
STRUCTURE_AXES = ("depth", "width", "heads", "ffn", "student")
SHARED = "all techniques"
"""the block of the family-wide offset every part of a basis shares"""
POOLED_BASES = ("prior",)
"""bases with a family-wide offset (see the module docstring: not the profile's)"""
SHARED_SCALE = 1.0
"""prior scale of the family-wide offset of ln(measured / predicted damage)"""

BaseFn = Callable[..., tuple[list[PartDamage], list[str], list[int]]]


# ------------------------------------------------------------------------------------------------
# Features
# ------------------------------------------------------------------------------------------------
def block_technique(part: PartDamage, basis: str) -> str:
    """The residual block's technique of a part: its own, except for structural parts on the profile basis,
    which are keyed by what the profile measured (``structure:block_drop``, ``structure:ffn``,
    ``structure:heads``): block drops and per-block ffn / heads entries are separate measurements whose errors
    need not be alike (on the tiny causal LM, ffn records a few tenths of a point better than their entries
    had moved its heads and layers predictions by 7-10 points)."""
    if basis == "profile" and part.technique == "structure" and part.source.startswith("profile:"):
        return "structure:" + part.source.rsplit(":", 1)[-1]
    return part.technique


def feature_names(technique: str, priors: Priors) -> tuple[str, ...]:
    technique = technique.split(":", 1)[0]
    if technique == "quantization":
        methods = tuple(m for m in priors.data.quantization["methods"] if m != "rtn")
        return ("intercept", "bits", "group") + tuple(f"method:{m}" for m in methods)
    if technique == "sparsity":
        return ("intercept", "logit_level", "pattern:n:m", "method:magnitude", "method:sparsegpt", "recovery")
    if technique == "structure":
        return ("intercept",) + tuple(f"removed:{a}" for a in STRUCTURE_AXES) + ("recovery",)
    if technique == "low_rank":
        return ("intercept", "removed_rank", "targets:mlp", "targets:attention")
    raise ValueError(f"unknown technique {technique!r}")


def _format_features(name: str, priors: Priors, methods: tuple[str, ...]) -> np.ndarray:
    from planner.errors import FitplanError
    from planner.formats import get_format

    known = priors.quant_format(name)
    try:
        registry = get_format(name)
        bits, group = registry.bits, registry.group_size
    except FitplanError:
        bits, group = None, None
    if bits is None:
        bits = round(known.qb) if known is not None and known.qb is not None else 4.0
    group = 1024 if not group else min(group, 1024)
    method = known.method if known is not None and known.method else "rtn"
    return np.array([(bits - 4.0) / 4.0, math.log2(group / 128.0) / 3.0]
                    + [1.0 if method == m else 0.0 for m in methods])


def _recovery(tokens: float, facts: ModelFacts) -> float:
    return math.log1p(tokens / facts.params) / 5.0


def part_features(part: PartDamage, strategy: Any, facts: ModelFacts, priors: Priors) -> np.ndarray:
    """phi_t of one part of ``strategy`` (see the module docstring)."""
    from planner.accuracy.parts import _recovery_tokens

    technique = part.technique
    names = feature_names(technique, priors)
    if technique == "quantization":
        methods = tuple(n.split(":", 1)[1] for n in names if n.startswith("method:"))
        total, acc = 0.0, np.zeros(len(names) - 1)
        for fmt, share in format_shares(strategy.quantization, facts).items():
            damage = format_damage(fmt, facts, priors, [])
            if damage is not None and share > 0:
                weight = share * damage.median
                acc += weight * _format_features(fmt, priors, methods)
                total += weight
        return np.concatenate([[1.0], acc / total if total else acc])
    if technique == "sparsity":
        sp = strategy.sparsity
        level = min(max(sp.level, 1e-3), 1 - 1e-3)
        return np.array([1.0, math.log(level / (1 - level)), float(":" in sp.pattern),
                         float(sp.method == "magnitude"), float(sp.method == "sparsegpt"),
                         _recovery(_recovery_tokens(sp)[0], facts)])
    if technique == "low_rank":
        lr = strategy.low_rank
        return np.array([1.0, 1.0 - lr.rank_ratio, float(lr.targets == "mlp"), float(lr.targets == "attention")])
    removed = dict.fromkeys(STRUCTURE_AXES, 0.0)
    tokens = 0.0
    dist, sp = strategy.distillation, strategy.sparsity
    if dist is not None and (sp is None or not sp.structured or part.setting == dist.summary()
                             or part.source.startswith("profile")):
        tokens = float(dist.steps * dist.batch_size * dist.seq_len)
        if dist.student:
            from planner.models import get_model

            kept = min(get_model(dist.student).params.total / facts.params, 1.0)
            removed["student"] = 1.0 - kept
        removed["depth"] = 1.0 - (dist.depth_ratio or 1.0)
        removed["width"] = 1.0 - (dist.width_ratio or 1.0)
    elif sp is not None:
        tokens = _recovery_tokens(sp)[0]
        removed[{"layers": "depth", "heads": "heads", "ffn": "ffn"}[sp.pattern]] = sp.level
    return np.array([1.0] + [removed[a] for a in STRUCTURE_AXES] + [_recovery(tokens, facts)])


# ------------------------------------------------------------------------------------------------
# Observations and the joint fit
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Observation:
    """One measured record, ready to fit: its base parts, their blocks and features, ln M and its variance."""

    parts: tuple[PartDamage, ...]
    blocks: tuple[tuple[str, str], ...]
    features: tuple[np.ndarray, ...]
    log_measured: float
    variance: float
    """known variance of log_measured: measurement resolution and the stacked pairs' widening"""
    source: str
    resolution: float = 0.0
    """r: the damage a measured retained % resolves (``log_measured`` is ``ln(M + r)``; see :func:`observation`)"""


@dataclass(frozen=True)
class Block:
    technique: str
    basis: str
    names: tuple[str, ...]
    start: int
    n: int
    """records with a part in this block"""
    stacked: int
    """of which stacked (several parts)"""
    records: frozenset[int]
    """indices of those observations"""

    @property
    def slice(self) -> slice:
        return slice(self.start, self.start + len(self.names))


def base_spread(technique: str, basis: str, priors: Priors) -> float:
    return PROFILE_SIGMA if basis == "profile" else priors.rules[technique].sigma


def observation(parts: list[PartDamage], bases: list[str], strategy: Any, facts: ModelFacts, priors: Priors,
                measured_damage: float, scale: float, source: str) -> Observation:
    pairs = len(parts) * (len(parts) - 1) / 2
    resolution = MEASUREMENT_NOISE_PP / 100.0 / scale
    damage = max(measured_damage, 0.0) + resolution  # compared with predicted + resolution (see the fit)
    variance = (resolution / damage) ** 2 + pairs * priors.interaction.sigma_per_pair ** 2
    return Observation(tuple(parts), tuple((block_technique(p, b), b) for p, b in zip(parts, bases)),
                       tuple(part_features(p, strategy, facts, priors) for p in parts),
                       math.log(damage), variance, source, resolution)


def _log_total(damages: list[Damage], priors: Priors) -> float:
    return math.log(combine(damages, priors.interaction.gamma, priors.interaction.sigma_per_pair).median)


def rescale_parts(parts: list[PartDamage], total: float, priors: Priors) -> list[PartDamage]:
    """The parts with every log-damage shifted by one amount so that they combine to ``total`` (exact:
    the combined damage is homogeneous of degree 1 in the parts' damages)."""
    shift = math.log(total) - _log_total([p.damage for p in parts], priors)
    return [PartDamage(p.technique, p.setting, Damage(p.damage.mu + shift, p.damage.s), p.n_rows, p.source,
                        gain=p.gain, resolution=p.resolution) for p in parts]


@dataclass
class ResidualModel:
    """The fitted residual model of one family (see the module docstring)."""

    family: str
    blocks: dict[tuple[str, str], Block]
    posterior: bayes.Posterior
    prior_sd: np.ndarray
    notes: list[str] = field(default_factory=list)
    cache: dict = field(default_factory=dict, repr=False)
    """corrected parts per (facts, basis, part, strategy shape), filled by predict_quality"""

    def correct(self, part: PartDamage, basis: str, phi: np.ndarray, priors: Priors,
                scale: float) -> tuple[Damage, int, bool] | None:
        """The corrected damage of a part predicted on ``basis``, the records behind it, and whether only
        the shared family offset informs it (no record of its technique; its own coefficients then add
        their prior variance). None: no record of this basis. The interval is for a measurement on a metric
        of this ``scale``: it includes the resolution of a measured retained % (as the records' do)."""
        technique = block_technique(part, basis)
        block = self.blocks.get((technique, basis))
        shared = self.blocks.get((SHARED, basis))
        if shared is None and block is None:
            return None
        x = np.zeros(len(self.prior_sd))
        if shared is not None:
            x[shared.slice] = 1.0
        unknown = 0.0
        if block is not None:
            x[block.slice] = phi
        else:
            unknown = float(phi ** 2 @ np.array(_prior_scales(technique, basis, priors)) ** 2)
        shift, spread = self.posterior.predict(x)
        resolution = MEASUREMENT_NOISE_PP / 100.0 / scale
        unknown += (resolution / max(math.exp(part.damage.mu + shift), resolution)) ** 2
        spread = math.sqrt(spread ** 2 + unknown) * t90(self.posterior.dof) / Z80
        if part.damage.s > 0:
            spread = min(spread, part.damage.s)
        return Damage(part.damage.mu + shift, spread), (block or shared).n, block is None

    def records_behind(self, keys: list[tuple[str, str]]) -> int:
        """Distinct records informing any of these (technique, basis) blocks."""
        return len(frozenset().union(*(self.blocks[k].records for k in keys if k in self.blocks)))

    def coefficients(self, technique: str, basis: str = "prior") -> dict[str, tuple[float, float]]:
        """Feature -> (posterior mean, posterior sd) of one block's coefficients."""
        block = self.blocks[(technique, basis)]
        sl = block.slice
        sd = np.sqrt(np.diag(self.posterior.cov)[sl])
        return {n: (float(m), float(s)) for n, m, s in zip(block.names, self.posterior.mean[sl], sd)}


def _prior_scales(technique: str, basis: str, priors: Priors) -> list[float]:
    """Prior scales of one block's coefficients (see the module docstring)."""
    if technique == SHARED:
        return [SHARED_SCALE]
    spread = base_spread(technique, basis, priors)
    tau = math.sqrt(max(spread ** 2 - RESIDUAL_NOISE ** 2, RESIDUAL_NOISE ** 2))
    return [tau] + [tau * SLOPE_SCALE] * (len(feature_names(technique, priors)) - 1)


def fit_residual_model(family: str, observations: list[Observation], priors: Priors) -> ResidualModel | None:
    """The joint posterior of every (technique, basis) block the observations touch, and of the shared
    family offset of each basis."""
    if not observations:
        return None
    members: dict[tuple[str, str], list[int]] = {}
    for i, obs in enumerate(observations):
        for technique, basis in dict.fromkeys(obs.blocks):
            members.setdefault((technique, basis), []).append(i)
            if basis not in POOLED_BASES:
                continue
            shared = members.setdefault((SHARED, basis), [])
            if not shared or shared[-1] != i:
                shared.append(i)
    blocks, sds, start = {}, [], 0
    for (technique, basis), rows in members.items():
        names = ("intercept",) if technique == SHARED else feature_names(technique, priors)
        blocks[(technique, basis)] = Block(technique, basis, names, start, len(rows),
                                           sum(len(observations[i].parts) > 1 for i in rows), frozenset(rows))
        sds.extend(_prior_scales(technique, basis, priors))
        start += len(names)
    prior_sd = np.array(sds)
    variances = np.array([o.variance for o in observations])
    designs = []  # per observation, per part: the row of the design matrix its log-damage shift is
    for obs in observations:
        rows = []
        for (technique, basis), phi in zip(obs.blocks, obs.features):
            x = np.zeros(start)
            x[blocks[(technique, basis)].slice] = phi
            if (SHARED, basis) in blocks:
                x[blocks[(SHARED, basis)].slice] = 1.0
            rows.append(x)
        designs.append(rows)
    w = np.zeros(start)
    stacked = any(len(o.parts) > 1 for o in observations)
    posterior = None
    for _ in range(GAUSS_NEWTON_PASSES if stacked else 1):
        X, y = np.zeros((len(observations), start)), np.zeros(len(observations))
        for i, (obs, rows) in enumerate(zip(observations, designs)):
            shifts = [float(x @ w) for x in rows]
            damages = [Damage(p.damage.mu + f, p.damage.s) for p, f in zip(obs.parts, shifts)]
            log_total = _log_total(damages, priors)
            if len(damages) == 1:
                shares = [1.0]
            else:
                eps = 1e-4
                shares = [(_log_total(damages[:j] + [Damage(d.mu + eps, d.s)] + damages[j + 1:], priors)
                           - log_total) / eps for j, d in enumerate(damages)]
            # measured and predicted damage are compared with the resolution r added to both: ln(M + r) vs
            # ln(D + r). Near-lossless records then say "both about zero" instead of a log-ratio of two floors
            # (a measured 100.3% retained against a predicted 99.99% read as 10x the damage, and a few such
            # records pulled every correction up); the slope of ln(D + r) is c_p D / (D + r).
            total = math.exp(log_total)
            damp = total / (total + obs.resolution)
            shares = [c * damp for c in shares]
            for c, x in zip(shares, rows):
                X[i] += c * x
            y[i] = obs.log_measured - math.log(total + obs.resolution) + sum(c * f for c, f in zip(shares, shifts))
        posterior = bayes.fit(X, y, variances, prior_sd, RESIDUAL_NOISE, NOISE_DOF, PRIOR_TAIL_DOF, start=posterior)
        w = posterior.mean
    assert posterior is not None
    return ResidualModel(family, blocks, posterior, prior_sd)
