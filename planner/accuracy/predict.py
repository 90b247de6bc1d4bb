"""``predict_quality``: predicted quality retained of a compressed model, with interval and basis.

Three bases:

- **prior**: the published-data rules of :mod:`.priors`;
- **profile**: a :class:`SensitivityProfile` of this model is given and covers the strategy's
  quantization / sparsity / depth options: that part's damage is the sum of the profile's measured
  per-(block, group) effects, each option's scaled by its measured additivity (whole-model entry over the
  summed effects, :meth:`SensitivityProfile.additivity`); parts the profile does not cover come from the
  priors (noted);
- **calibrated**: a :class:`CalibrationStore` holds measured runs of the same model family: each part
  (prior or profile) whose technique the records inform is corrected by the residual model of
  :mod:`.residual` (a Bayesian linear model on the part's strategy features), with its interval.

The prediction's basis is the most informed of its parts' (calibrated, then profile, then prior).
Parts combine by :func:`planner.accuracy.combine.combine` (additive in log-quality + interaction term,
wider interval for stacked parts). Work that depends only on the model or on one part is cached, so a
call costs tens of microseconds once a model's facts are known.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from planner.accuracy.calibration import CalibrationStore
from planner.accuracy.combine import Damage, combine
from planner.accuracy.metrics import check_metric, retained_from_damage
from planner.accuracy.parts import (ModelFacts, PartDamage, distillation_damage, low_rank_damage, model_facts,
                                    quantization_damage, sparsity_damage)
from planner.accuracy.priors import Z80, Priors, load_priors
from planner.accuracy.profile import (PROFILE_SIGMA, STRUCTURED_GROUP, SensitivityProfile, damage_sum, option_damage,
                                      option_gain, sparsity_option)
from planner.accuracy.result import QualityPart, QualityPrediction
from planner.errors import InvalidRequestError
from planner.strategy import CompressionStrategy

if TYPE_CHECKING:
    from planner.models import ModelSpec


_facts_cache: dict[tuple, ModelFacts] = {}
_part_cache: dict[tuple, PartDamage] = {}


def _facts(spec, priors: Priors, training_tokens: float | None) -> ModelFacts:
    key = (id(priors), spec.name, spec.model_type, spec.params.total, spec.num_layers, training_tokens)
    facts = _facts_cache.get(key)
    if facts is None:
        facts = _facts_cache[key] = model_facts(spec, priors, training_tokens)
    return facts


def _student_params(name: str) -> float:
    from planner.models import get_model

    return float(get_model(name).params.total)


def prior_parts(strategy: CompressionStrategy, facts: ModelFacts, priors: Priors) -> list[PartDamage]:
    """Prior damage of each part of the strategy (cached per part and model)."""
    out = []
    for kind, part in (("distillation", strategy.distillation), ("sparsity", strategy.sparsity),
                       ("low_rank", strategy.low_rank), ("quantization", strategy.quantization)):
        if part is None:
            continue
        key = (id(priors), id(facts), kind, tuple(part.__dict__.values()))  # facts live in _facts_cache
        cached = _part_cache.get(key)
        if cached is None:
            if kind == "quantization":
                cached = quantization_damage(part, facts, priors)
            elif kind == "sparsity":
                cached = sparsity_damage(part, facts, priors)
            elif kind == "low_rank":
                cached = low_rank_damage(part, facts, priors)
            else:
                student = _student_params(part.student) if part.student else None
                cached = distillation_damage(part, facts, priors, student)
            if len(_part_cache) > 100_000:
                _part_cache.clear()
            _part_cache[key] = cached
        if cached is not None:
            out.append(cached)
    return out


# ------------------------------------------------------------------------------------------------
# Profile basis
# ------------------------------------------------------------------------------------------------
def _kept_blocks(strategy: CompressionStrategy, profile: SensitivityProfile, notes: list[str]) -> list[int] | None:
    """Original blocks a depth change keeps (None = all): :func:`planner.models.derive.original_blocks`,
    whole-layer pruning by the profile's recorded influence when it has one (noted either way)."""
    from planner.models.derive import influence_note, original_blocks

    dist = strategy.distillation
    if dist is not None and (dist.width_ratio is not None or dist.student):
        return None
    influence = profile.block_influence()
    note = influence_note(strategy, influence)
    if note:
        notes.append(note)
    return original_blocks(profile.model.num_blocks, strategy, influence)


def _depth_recovery_tokens(strategy: CompressionStrategy) -> float:
    """Training tokens that follow a depth change (distillation, or fine-tuning of layer pruning)."""
    from planner.accuracy.parts import _recovery_tokens

    if strategy.distillation is not None:
        d = strategy.distillation
        return float(d.steps * d.batch_size * d.seq_len)
    if strategy.sparsity is not None:
        return _recovery_tokens(strategy.sparsity)[0]
    return 0.0


def _outside_blocks(q, facts: ModelFacts | None, priors: Priors | None) -> Damage | None:
    """Prior damage of what a QuantizationSpec does outside the blocks (embeddings, lm_head, KV cache)."""
    if facts is None or priors is None or not (q.embeddings or q.lm_head or q.kv_cache):
        return None
    part = quantization_damage(q.model_copy(update={"weights": "bf16", "attention": None, "mlp": None,
                                                    "block_formats": (), "keep_first_layers": 0,
                                                    "keep_last_layers": 0}), facts, priors)
    return part.damage if part is not None else None


def _profile_part(technique: str, setting: str, mu: float, scale: float, n: int, source: str,
                  gain: float = 0.0) -> PartDamage:
    """A profile part: damage ``exp(mu)`` with log-spread ``PROFILE_SIGMA``, and the resolution ``r`` of a
    measured retained % (``residual.MEASUREMENT_NOISE_PP`` points) added to the upper end of its damage:
    the 80% interval reaches at least ``D + r``. A near-lossless profile sum says "damage about zero,
    within a run's resolution", not "exactly 99.99%" (a MiniLM candidate predicted at 99.99% [99.99, 99.99]
    measured 99.98%). The resolution is additive, not part of the lognormal: folded into the log-spread of
    a near-zero damage it made that spread huge, and the combination rule (matching the stacked parts'
    mean and variance) then let a lossless part erase another part's damage (hqq-int8 with 0.5 of the FFN
    pruned, 95.5% measured, was predicted 99.85% on the tiny LM)."""
    from planner.accuracy.residual import MEASUREMENT_NOISE_PP

    return PartDamage(technique, setting, Damage(mu, PROFILE_SIGMA), n, source, gain=gain,
                      resolution=MEASUREMENT_NOISE_PP / 100.0 / scale)


def _one_shot(damage: float, what: str, strategy: CompressionStrategy, facts: ModelFacts | None,
              priors: Priors | None, notes: list[str]) -> float:
    """Log of a profile's one-shot structural damage, scaled down by the structure prior's recovery factor
    ``exp(recovery * ln(1 + T/N))`` when training follows the change (noted)."""
    mu = math.log(damage)
    tokens = _depth_recovery_tokens(strategy)
    if tokens and facts is not None and priors is not None:
        factor = priors.rules["structure"].coefficients()["recovery"] * math.log1p(tokens / facts.params)
        mu += factor
        notes.append(f"profile {what} effects are one-shot: {tokens:,.0f} training tokens scale their damage by "
                     f"{math.exp(factor):.2f} (structure prior's recovery term).")
    return mu


def profile_parts(strategy: CompressionStrategy, profile: SensitivityProfile, scale: float,
                  notes: list[str], facts: ModelFacts | None = None,
                  priors: Priors | None = None) -> tuple[dict[str, PartDamage], int]:
    """Parts the profile covers (technique -> damage) and how many entries were used.

    Block-drop and structured-pruning (ffn, heads) effects are measured one-shot; when training follows the
    change (distillation steps, fine-tuning steps), the structure rule's recovery factor scales them down
    (:func:`_one_shot`)."""
    n_blocks = profile.model.num_blocks
    covered: dict[str, PartDamage] = {}
    used = 0
    kept = _kept_blocks(strategy, profile, notes)
    blocks = kept if kept is not None else list(range(n_blocks))
    if kept is not None:
        effects = [profile.drop_effect(b) for b in range(n_blocks) if b not in set(kept)]
        if effects and all(e is not None for e in effects):
            mu = _one_shot(damage_sum(effects, scale), "block-drop", strategy, facts, priors, notes)
            covered["structure"] = _profile_part("structure", f"drop {len(effects)} of {n_blocks} blocks", mu,
                                                 scale, len(effects), "profile:block_drop")
            used += len(effects)
        elif effects:
            notes.append("profile lacks block-drop effects for some removed blocks: depth from the priors.")
    sp = strategy.sparsity
    if sp is not None and sp.pattern in STRUCTURED_GROUP:
        group = STRUCTURED_GROUP[sp.pattern]
        option = sparsity_option(sp.pattern, sp.level)
        effects = [profile.effect(b, group, option) for b in blocks]
        if effects and all(e is not None for e in effects):
            damage = option_damage(profile, [(option, e) for e in effects], scale)
            mu = _one_shot(damage, f"{sp.pattern} pruning", strategy, facts, priors, notes)
            covered["structure"] = _profile_part("structure", sp.summary(), mu, scale, len(effects),
                                                 f"profile:entries:{sp.pattern}",
                                                 gain=option_gain(profile, [(option, e) for e in effects], scale))
            used += len(effects)
        else:
            notes.append(f"profile has no complete {option} entries: structured pruning from the priors.")
    q = strategy.quantization
    if q is not None:
        effects, missing = [], set()
        for position, block in enumerate(blocks):
            for group in ("attention", "mlp"):
                fmt = q.block_format(position, group, len(blocks), block)
                if fmt in ("fp32", "fp16", "bf16"):
                    continue
                effect = profile.effect(block, group, fmt)
                if effect is None:
                    missing.add(fmt)
                else:
                    effects.append((fmt, effect))
        if missing:
            notes.append(f"profile has no entries for {', '.join(sorted(missing))}: quantization from the priors.")
        elif effects:
            total = option_damage(profile, effects, scale)
            rest = _outside_blocks(q, facts, priors)
            if rest is not None:
                total += rest.median
                notes.append("profile covers the blocks; embeddings / lm_head / KV-cache formats come from the priors.")
            covered["quantization"] = _profile_part("quantization", q.summary(), math.log(total), scale,
                                                    len(effects), "profile:entries",
                                                    gain=option_gain(profile, effects, scale))
            used += len(effects)
    sp = strategy.sparsity
    if sp is not None and not sp.structured:
        wanted = [(b, g, sparsity_option(sp.pattern, sp.block_level(b, g))) for b in blocks
                  for g in ("attention", "mlp") if sp.block_level(b, g) > 0]
        effects = [(option, profile.effect(b, g, option)) for b, g, option in wanted]
        option = ", ".join(sorted({o for _, _, o in wanted}))
        if effects and all(e is not None for _, e in effects):
            if sp.method != profile.settings.sparsity_method:
                notes.append(f"profile measured {profile.settings.sparsity_method} sparsity, strategy uses {sp.method}.")
            covered["sparsity"] = _profile_part("sparsity", sp.summary(),
                                                math.log(option_damage(profile, effects, scale)), scale,
                                                len(effects), "profile:entries", gain=option_gain(profile, effects, scale))
            used += len(effects)
        else:
            notes.append(f"profile has no complete {option} entries: sparsity from the priors.")
    return covered, used


# ------------------------------------------------------------------------------------------------
# Base parts (prior, profile) and the calibration of each part
# ------------------------------------------------------------------------------------------------
def base_parts(spec, strategy: CompressionStrategy, facts: ModelFacts, priors: Priors,
               profile: SensitivityProfile | None, notes: list[str]) -> tuple[list[PartDamage], list[str], list[int]]:
    """The uncorrected parts of a prediction: the priors' parts, replaced by the profile's where it
    covers them (a profile of another model is not applied, noted). Returns (parts, bases, n)."""
    parts = prior_parts(strategy, facts, priors)
    bases = ["prior"] * len(parts)
    ns = [p.n_rows for p in parts]
    for p in parts:
        notes.extend(p.notes)
    if profile is not None:
        if not profile.matches(spec):
            notes.append(f"sensitivity profile is for {profile.model.name}, not {spec.name}: not applied.")
        else:
            profile_scale = priors.metric_scale(profile.evaluator.metric_family)
            covered, _ = profile_parts(strategy, profile, profile_scale, notes, facts, priors)
            for i, p in enumerate(parts):
                if p.technique in covered:
                    parts[i] = covered.pop(p.technique)
                    bases[i] = "profile"
                    ns[i] = parts[i].n_rows
            for p in covered.values():  # e.g. a depth change the priors did not see as a part
                parts.append(p)
                bases.append("profile")
                ns.append(p.n_rows)
    return parts, bases, ns


def _base_for(priors: Priors, profile: SensitivityProfile | None, query=None, query_facts: ModelFacts | None = None):
    """``base(spec, strategy, use_profile) -> (parts, bases, facts)`` for the calibration store's fit (a record
    of the predicted model itself uses the prediction's facts, e.g. its training_tokens)."""
    def base(spec, strategy, use_profile):
        same = query is not None and (spec.name, spec.params.total) == (query.name, query.params.total)
        facts = query_facts if same and query_facts is not None else _facts(spec, priors, None)
        parts, bases, _ = base_parts(spec, strategy, facts, priors, profile if use_profile else None, [])
        return parts, bases, facts
    return base


def residual_model_for(spec: "ModelSpec | str", calibration: CalibrationStore, *,
                       profile: SensitivityProfile | None = None, priors: Priors | None = None):
    """The store's residual model for ``spec`` (None without usable records of its family)."""
    from planner.models import get_model

    priors = priors or load_priors()
    spec = get_model(spec) if isinstance(spec, str) else spec
    facts = _facts(spec, priors, None)
    return calibration.residual_model(spec, facts, _base_for(priors, profile, spec, facts), priors, profile)


def _calibrate(spec, strategy: CompressionStrategy, facts: ModelFacts, priors: Priors,
               profile: SensitivityProfile | None, calibration: CalibrationStore, parts: list[PartDamage],
               bases: list[str], ns: list[int], notes: list[str], scale: float) -> int | None:
    """Correct each part whose (technique, basis) the store's residual model covers, in place; returns the
    number of distinct records behind the corrections (None: nothing corrected)."""
    from planner.accuracy.residual import SHARED, block_technique, part_features

    model = calibration.residual_model(spec, facts, _base_for(priors, profile, spec, facts), priors, profile)
    applied, blocks = [], []
    if model is not None:
        notes.extend(model.notes)
        shape = tuple(tuple(x.__dict__.values()) if x is not None else None for x in
                      (strategy.distillation, strategy.sparsity, strategy.low_rank, strategy.quantization))
        for i, p in enumerate(parts):
            key = (id(facts), bases[i], p.technique, p.setting, p.damage, shape, scale)
            corrected = model.cache.get(key)
            if corrected is None:
                result = model.correct(p, bases[i], part_features(p, strategy, facts, priors), priors, scale)
                corrected = model.cache[key] = result and (PartDamage(
                    p.technique, p.setting, result[0], result[1],
                    f"calibration:{facts.family}:{p.technique}{':profile' if bases[i] == 'profile' else ''}",
                    gain=p.gain, resolution=p.resolution), result[2])
            if not corrected:
                continue
            parts[i], shared_only = corrected
            n = parts[i].n_rows
            applied.append(f"{p.technique} ({bases[i]}, n={n}" + (", family-wide offset only: no record of this "
                                                                 "technique)" if shared_only else ")"))
            blocks.append((block_technique(p, bases[i]), bases[i]) if not shared_only else (SHARED, bases[i]))
            bases[i] = "calibrated"
            ns[i] = n
    others = sorted(calibration.families - {facts.family})
    if others:
        notes.append(f"calibration store: records of other model families ({', '.join(others)}) are never applied "
                     f"to {facts.family}.")
    if applied:
        notes.append(f"calibrated by measured {facts.family} runs: {', '.join(applied)} (residual model).")
        return model.records_behind(blocks)
    same = [r for r in calibration.records if r.family == facts.family]
    if same:
        far = sum(not calibration.comparable(r, facts.family, facts.params) for r in same)
        notes.append(f"calibration store: {len(same)} {facts.family} records ({far} from models more than 8x "
                     "smaller or larger than this one), none usable for these techniques: not applied.")
    else:
        notes.append(f"calibration store has no measured {facts.family} records: not applied.")
    return None


# ------------------------------------------------------------------------------------------------
def _to_part(p: PartDamage, scale: float, basis: str, n: int) -> QualityPart:
    key = (scale, basis, n)
    shown = p.shown.get(key)
    if shown is None:
        # trusted values computed here: model_construct skips validation (this runs per candidate)
        shown = p.shown[key] = QualityPart.model_construct(
            technique=p.technique, setting=p.setting, retained_pct=retained_from_damage(p.damage.median, scale),
            low_pct=retained_from_damage(p.damage.quantile(Z80) + p.resolution, scale),
            high_pct=retained_from_damage(p.damage.quantile(-Z80) - p.gain, scale),
            basis=basis, n_measurements=n, source=p.source)
    return shown


def predict_quality(spec: "ModelSpec | str", strategy: CompressionStrategy, *, profile: SensitivityProfile | None = None,
                    calibration: CalibrationStore | None = None, metric: str = "accuracy",
                    training_tokens: float | None = None, priors: Priors | None = None) -> QualityPrediction:
    """Predicted quality retained by ``spec`` (a ModelSpec or a model name) compressed with ``strategy``.

    ``metric``: the family the percentage is expressed in (``accuracy`` by default, see
    :mod:`planner.accuracy.metrics`). ``training_tokens``: the model's pretraining tokens when the
    priors' table does not know them. ``priors``: an alternative fitted :class:`Priors` (the
    leave-one-out benchmark). A profile of another model, or a calibration store with no record of
    this model family, is not applied and a note says so.
    """
    priors = priors or load_priors()
    metric = check_metric(metric)
    if isinstance(spec, str):
        from planner.models import get_model

        spec = get_model(spec)
    if not isinstance(strategy, CompressionStrategy):
        raise InvalidRequestError(f"strategy must be a CompressionStrategy (CompressionStrategy.from_json reads "
                                  f"a file's JSON), got {type(strategy).__name__}.")
    if training_tokens is not None and not (isinstance(training_tokens, (int, float))
                                            and math.isfinite(training_tokens) and training_tokens > 0):
        raise InvalidRequestError(f"training_tokens must be a positive number of pretraining tokens, got "
                                  f"{training_tokens!r}.")
    scale = priors.metric_scale(metric)
    facts = _facts(spec, priors, training_tokens)
    notes = list(facts.notes)
    if strategy.is_identity:
        return QualityPrediction.model_construct(
            retained_pct=100.0, low_pct=100.0, high_pct=100.0, basis="prior", n_measurements=0, metric=metric,
            parts=(), interaction_pct=0.0, notes=("uncompressed: nothing to predict.",))
    parts, bases, ns = base_parts(spec, strategy, facts, priors, profile, notes)
    records = None
    if calibration is not None:
        records = _calibrate(spec, strategy, facts, priors, profile, calibration, parts, bases, ns, notes, scale)

    quality_parts = tuple(_to_part(p, scale, b, n) for p, b, n in zip(parts, bases, ns))
    interaction = priors.interaction
    total = combine([p.damage for p in parts], interaction.gamma, interaction.sigma_per_pair)
    retained = retained_from_damage(total.median, scale)
    basis = "calibrated" if "calibrated" in bases else "profile" if "profile" in bases else "prior"
    no_interaction = retained_from_damage(total.median - total.interaction, scale)
    return QualityPrediction.model_construct(
        retained_pct=retained, low_pct=retained_from_damage(total.high + max((p.resolution for p in parts), default=0.0),
                                                            scale),
        high_pct=retained_from_damage(total.low - sum(p.gain for p in parts), scale), basis=basis,
        n_measurements=records if basis == "calibrated" else sum(n for n, b in zip(ns, bases) if b == basis),
        metric=metric, parts=quality_parts, interaction_pct=no_interaction - retained,
        notes=tuple(dict.fromkeys(notes)))
