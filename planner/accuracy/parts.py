"""Strategy parts -> latent damages from the prior rules.

Each function turns one part of a :class:`~planner.strategy.CompressionStrategy` into a lognormal
latent damage (:class:`~planner.accuracy.combine.Damage`) using the fitted rules of
:mod:`planner.accuracy.priors` and the model's facts (:class:`ModelFacts`: size, pretraining tokens
per parameter, parameter shares of attention and MLP). Assumptions each part makes are returned as
notes, never silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from planner.accuracy.combine import Damage
from planner.accuracy.priors import Priors, low_rank_features, quant_features, sparsity_features, structure_features

RECOVERY_BATCH = 8
RECOVERY_SEQ = 128
"""SparsitySpec has no batch or sequence length: fine-tuning steps count as 8 x 128 tokens each (the
executors' DistillationSpec defaults)."""
KV_SHARE = 0.1
"""Share of the model's damage budget a KV-cache format acts on (an assumption: KV errors only touch
attention; no published row)."""
KV_FORMATS = {"fp8": "w8a8-fp8", "int8": "w8a8-int8", "int4": "hqq-int4"}


@dataclass(frozen=True)
class ModelFacts:
    """What the accuracy rules need to know about a model."""

    name: str
    family: str
    params: float
    tokens_per_param: float
    num_layers: int
    attention_share: float
    """share of the transformer blocks' Linear parameters in attention"""
    mlp_share: float
    embedding_share: float
    """embedding parameters relative to the blocks' Linear parameters"""
    lm_head_share: float
    notes: tuple[str, ...] = ()


@dataclass
class PartDamage:
    technique: str
    setting: str
    damage: Damage
    n_rows: int
    source: str
    notes: list[str] = field(default_factory=list)
    shown: dict = field(default_factory=dict, repr=False, compare=False)
    """QualityPart views of this damage per (metric scale, basis, n), filled by predict_quality"""
    resolution: float = 0.0
    """latent damage a measured retained % cannot resolve (profile parts): added to the upper end of the
    damage interval, outside the lognormal (``predict._profile_part``)"""
    gain: float = 0.0
    """latent gain its profile entries measured (:func:`planner.accuracy.profile.option_gain`): the interval's
    upper end reaches ``damage.quantile(-Z80) - gain``, above 100% retained when it exceeds that damage"""


def model_facts(spec, priors: Priors, training_tokens: float | None = None) -> ModelFacts:
    p = spec.params
    attention = p.attention
    mlp = p.mlp + p.experts + p.shared_experts
    blocks = max(attention + mlp, 1)
    notes = []
    if training_tokens is None:
        training_tokens, source = priors.pretraining_tokens(spec.name, spec.model_type)
        if training_tokens is None:
            tpp = priors.data.pretraining.default_tokens_per_param
            notes.append(f"pretraining tokens of {spec.name} unknown: assumed {tpp:g} per parameter "
                         f"({priors.data.pretraining.default_source}); pass training_tokens to refine.")
        else:
            tpp = training_tokens / p.total
    else:
        tpp = training_tokens / p.total
    return ModelFacts(name=spec.name, family=spec.model_type, params=float(p.total), tokens_per_param=tpp,
                      num_layers=spec.num_layers, attention_share=attention / blocks, mlp_share=mlp / blocks,
                      embedding_share=p.embeddings / blocks, lm_head_share=p.lm_head / blocks, notes=tuple(notes))


def format_damage(name: str, facts: ModelFacts, priors: Priors, notes: list[str]) -> Damage | None:
    """Damage of a whole model stored in this weight format; None when lossless."""
    fmt = priors.quant_format(name)
    if fmt is not None and fmt.lossless:
        return None
    if fmt is None:
        from planner.formats import get_format

        registry = get_format(name)
        if registry.bits is None or registry.bits >= 16:
            return None
        group = registry.group_size or 0
        qb = registry.bits + (0.25 * math.log2(128 / group) if group else -0.25)
        method = "rtn"
        notes.append(f"{name}: no specific prior; from {registry.bits:g} bits and group size "
                     f"{group or 'per-channel'} (quality bits {qb:.2f}, round-to-nearest).")
    else:
        assert fmt.qb is not None and fmt.method is not None
        qb, method = fmt.qb, fmt.method
    mu, s = priors.rules["quantization"].predict_log(
        quant_features(qb, method, facts.params, facts.tokens_per_param, priors.data))
    return Damage(mu, s)


def _mix(weighted: list[tuple[float, Damage]]) -> Damage | None:
    """Share-weighted sum of damages of one part (treated as fully correlated: one log-spread)."""
    weighted = [(w, d) for w, d in weighted if w > 0]
    if not weighted:
        return None
    total = sum(w * d.median for w, d in weighted)
    spread = sum(w * d.median * d.s for w, d in weighted) / total
    return Damage(math.log(total), spread)


def format_shares(q, facts: ModelFacts) -> dict[str, float]:
    """Format name -> share of the blocks' Linear parameters a QuantizationSpec stores in it (per-block
    overrides and kept layers included; embeddings and lm_head relative to the blocks)."""
    shares: dict[str, float] = {}
    n = facts.num_layers
    if q.block_formats or q.keep_first_layers or q.keep_last_layers:
        for block in range(n):
            for group, share in (("attention", facts.attention_share), ("mlp", facts.mlp_share)):
                fmt = q.block_format(block, group, n)
                shares[fmt] = shares.get(fmt, 0.0) + share / n
    else:
        for group, share in (("attention", facts.attention_share), ("mlp", facts.mlp_share)):
            fmt = q.format_for(group)
            shares[fmt] = shares.get(fmt, 0.0) + share
    for share, fmt in ((facts.embedding_share, q.embeddings), (facts.lm_head_share, q.lm_head)):
        if fmt:
            shares[fmt] = shares.get(fmt, 0.0) + share
    return shares


def quantization_damage(q, facts: ModelFacts, priors: Priors) -> PartDamage | None:
    """Share-weighted damage of the formats a QuantizationSpec puts on each block's attention and MLP
    (per-block overrides and kept layers included), embeddings, lm_head and KV cache."""
    notes: list[str] = []
    weighted: list[tuple[float, Damage]] = []
    for fmt, share in format_shares(q, facts).items():
        damage = format_damage(fmt, facts, priors, notes)
        if damage:
            weighted.append((share, damage))
    if q.kv_cache in KV_FORMATS:
        damage = format_damage(KV_FORMATS[q.kv_cache], facts, priors, notes)
        if damage:
            weighted.append((KV_SHARE, damage))
            notes.append(f"KV cache in {q.kv_cache}: weighted as {KV_SHARE:g} of a whole-model format of the same "
                         "precision (an assumption, no published row).")
    mixed = _mix(weighted)
    if mixed is None:
        return None
    return PartDamage("quantization", q.summary(), mixed, priors.rules["quantization"].n_rows,
                      "prior:quantization", notes)


def _recovery_tokens(sparsity) -> tuple[float, list[str]]:
    if not sparsity.finetune_steps:
        return 0.0, []
    tokens = float(sparsity.finetune_steps * sparsity.gradual_steps * RECOVERY_BATCH * RECOVERY_SEQ)
    return tokens, [f"recovery fine-tuning counted as {tokens:,.0f} tokens ({RECOVERY_BATCH} x {RECOVERY_SEQ} "
                    "per step)."]


def sparsity_damage(sp, facts: ModelFacts, priors: Priors) -> PartDamage:
    tokens, notes = _recovery_tokens(sp)
    if sp.structured:
        share = {"heads": facts.attention_share, "ffn": facts.mlp_share, "layers": 1.0}[sp.pattern]
        return _structure(1.0 - sp.level * share, tokens, facts, priors, sp.summary(), notes)
    levels: dict[float, float] = {}
    if sp.block_levels:
        n = facts.num_layers
        for block in range(n):
            for group, share in (("attention", facts.attention_share), ("mlp", facts.mlp_share)):
                level = sp.block_level(block, group)
                levels[level] = levels.get(level, 0.0) + share / n
    else:
        levels[sp.level] = 1.0
    weighted = []
    for level, share in levels.items():
        if level > 0:
            mu, s = priors.rules["sparsity"].predict_log(sparsity_features(
                level, sp.pattern, sp.method, facts.params, facts.tokens_per_param, tokens, priors.data))
            weighted.append((share, Damage(mu, s)))
    mixed = _mix(weighted) or Damage(math.log(1e-4), 0.0)
    return PartDamage("sparsity", sp.summary(), mixed, priors.rules["sparsity"].n_rows, "prior:sparsity", notes)


def _structure(kept: float, tokens: float, facts: ModelFacts, priors: Priors, setting: str,
               notes: list[str]) -> PartDamage:
    mu, s = priors.rules["structure"].predict_log(structure_features(kept, tokens, facts.params, priors.data))
    notes = notes + [f"{setting}: keeps {kept:.0%} of the block parameters, {tokens:,.0f} recovery tokens."]
    return PartDamage("structure", setting, Damage(mu, s), priors.rules["structure"].n_rows,
                      "prior:structure", notes)


def distillation_damage(dist, facts: ModelFacts, priors: Priors, student_params: float | None) -> PartDamage:
    tokens = float(dist.steps * dist.batch_size * dist.seq_len)
    if dist.student:
        if student_params is None:
            raise ValueError("student_params is needed for a named student")
        kept = min(student_params / facts.params, 1.0)
    else:
        depth = dist.depth_ratio if dist.depth_ratio is not None else 1.0
        width = dist.width_ratio if dist.width_ratio is not None else 1.0
        kept = depth * (facts.attention_share + facts.mlp_share * width)
    return _structure(kept, tokens, facts, priors, dist.summary(), [])


def low_rank_damage(lr, facts: ModelFacts, priors: Priors) -> PartDamage:
    share = {"all-linear": 1.0, "mlp": facts.mlp_share, "attention": facts.attention_share}[lr.targets]
    mu, s = priors.rules["low_rank"].predict_log(low_rank_features(lr.rank_ratio))
    return PartDamage("low_rank", lr.summary(), Damage(mu + math.log(share), s), priors.rules["low_rank"].n_rows,
                      "prior:low_rank", [])
