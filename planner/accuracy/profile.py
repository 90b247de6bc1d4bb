"""Sensitivity profile: the measured effect of each format / sparsity level on each block of one model.

Written by ``executors.profile`` (closed-loop issue), read here without torch. When a profile of the
model is given, :func:`planner.accuracy.predict_quality` predicts a strategy as the sum of the
profile's per-(block, group) effects plus the interaction term of :mod:`planner.accuracy.combine`.

File format (JSON, UTF-8; ``SensitivityProfile.save`` / ``SensitivityProfile.load``)::

    {
      "format": "fitplan.sensitivity_profile",
      "version": 1,
      "model": {"name": "meta-llama/Llama-3.1-8B", "family": "llama",
                "fingerprint": "<model_fingerprint(config)>", "num_blocks": 32},
      "evaluator": {"name": "perplexity", "metric": "perplexity", "metric_family": "perplexity",
                    "data_fingerprint": "<hash of the evaluation texts>", "baseline": 7.31},
      "settings": {"samples": 64, "seq_len": 256, "seed": 0, "device": "cuda:0",
                   "sparsity_method": "wanda"},
      "entries": [   # one option applied to one module group of one block, everything else intact
        {"block": 0, "group": "attention", "option": "nf4", "retained_pct": 99.7, "seconds": 4.1},
        {"block": 0, "group": "mlp", "option": "sparsity:2:4:0.5", "retained_pct": 97.9, "seconds": 6.0}
      ],
      "block_drop": [  # the whole block removed (depth pruning); influence optional (older profiles lack it)
        {"block": 0, "retained_pct": 61.0, "seconds": 3.2, "influence": 0.083}
      ],
      "whole": [   # optional: one option applied to every block's groups at once
        {"option": "nf4", "retained_pct": 98.9, "seconds": 4.5}
      ],
      "created": "2026-12-05T23:00:00Z",
      "total_seconds": 812.5,
      "cost": {"evaluations": 198, "load_seconds": 2.1, "reference_seconds": 0.4,
               "calibration_seconds": 0.3, "apply_seconds": 9.8, "evaluate_seconds": 31.0,
               "block_passes": 1188, "block_passes_replayed": 540, "threads": 2}   # optional
    }

- ``group``: ``attention`` or ``mlp`` (the module groups of :class:`~planner.strategy.QuantizationSpec`);
- ``option``: a weight-format name of :data:`planner.strategy.WEIGHT_FORMATS`, or
  ``sparsity:<pattern>:<level>`` (``sparsity:unstructured:0.5``, ``sparsity:2:4:0.5``; the structured
  ``sparsity:ffn:0.25`` on ``mlp`` groups and ``sparsity:heads:0.25`` on ``attention`` groups: that share of
  the block's MLP channels / head groups removed, :data:`STRUCTURED_GROUP`);
- ``retained_pct``: the evaluator's quality retained, % of the unmodified model (as the executors
  report it: baseline/compressed for lower-is-better metrics);
- ``whole``: each option applied to every group it applies to at once, as a uniform strategy runs it. The
  per-group effects of an option need not add up: on the tiny causal LM 2:4 sparsity of block 0's MLP
  alone keeps 88.5% of the perplexity, of every group at once 95.8%; on MiniLM the twelve hqq-int2 groups
  multiply to 37.6% of the fidelity and measure 21.1% together. :meth:`SensitivityProfile.additivity`
  is the ratio of the two, from which :func:`option_damage` corrects the option's summed effects;
- ``influence`` (``block_drop``): the block's ShortGPT influence ``1 - mean cos(h_in, h_out)`` on the
  whole-layer pruning step's calibration batches of the unpruned model; whole-layer pruning keeps the
  blocks of highest influence (:func:`planner.models.derive.kept_by_influence`), so the planner predicts
  the blocks the executor removes (:meth:`SensitivityProfile.block_influence`);
- ``seconds``: what measuring the entry cost (the search uses it to budget new profiles);
- ``cost`` (optional): where the measuring time went: loading the model, the reference pass, the
  sparsity calibration pass, applying the options (quantizing / masking) and evaluating; the number of
  evaluator passes, and of block forward passes needed vs replayed from the intact model's recorded
  outputs instead of recomputed (``executors.replay``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from planner.errors import InvalidConfigError

PROFILE_FORMAT = "fitplan.sensitivity_profile"
PROFILE_VERSION = 1
MODULE_GROUPS: tuple[str, ...] = ("attention", "mlp")
_VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "use_cache",
                         "architectures", "auto_map")


def model_fingerprint(config: dict) -> str:
    """Stable short hash of a model's architecture (its config.json minus names, versions and dtype)."""
    payload = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sparsity_option(pattern: str, level: float) -> str:
    """The profile option name of a sparsity pattern and level: 'sparsity:2:4:0.5'."""
    return f"sparsity:{pattern}:{level:g}"


STRUCTURED_GROUP = {"ffn": "mlp", "heads": "attention"}
"""structured pruning patterns a profile measures per block, and the module group each removes part of"""

PROFILE_SIGMA = 0.25
"""log-spread of a profile's additive estimate of one part (measurement noise of the per-block effects and
the additivity of blocks within a part; HIGGS's linearity theorem holds in the medium-bit regime)."""


class _Profile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProfileModel(_Profile):
    name: str
    family: str = Field(description="the config's model_type")
    fingerprint: str | None = Field(None, description="model_fingerprint(config.json)")
    num_blocks: int = Field(gt=0)


class ProfileEvaluator(_Profile):
    name: str
    metric: str
    metric_family: Literal["accuracy", "perplexity", "embedding"]
    data_fingerprint: str | None = None
    baseline: float | None = Field(None, description="the unmodified model's score")


class ProfileSettings(_Profile):
    samples: int | None = Field(None, ge=1)
    seq_len: int | None = Field(None, ge=1)
    seed: int = 0
    device: str | None = None
    sparsity_method: Literal["magnitude", "wanda"] = "magnitude"


class ProfileEntry(_Profile):
    block: int = Field(ge=0)
    group: Literal["attention", "mlp"]
    option: str
    retained_pct: float = Field(gt=0, allow_inf_nan=False)
    seconds: float = Field(0.0, ge=0)

    @field_validator("option")
    @classmethod
    def _known_option(cls, value: str) -> str:
        if value.startswith("sparsity:"):
            pattern, _, level = value[len("sparsity:"):].rpartition(":")
            from planner.strategy import SPARSITY_PATTERNS

            try:
                ok = pattern in SPARSITY_PATTERNS and 0 < float(level) < 1
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"option {value!r}: use sparsity:<pattern>:<level>, pattern one of "
                                 f"{', '.join(SPARSITY_PATTERNS)}, 0 < level < 1.")
        return value


class BlockDrop(_Profile):
    block: int = Field(ge=0)
    retained_pct: float = Field(gt=0, allow_inf_nan=False)
    seconds: float = Field(0.0, ge=0)
    influence: float | None = Field(None, allow_inf_nan=False,
                                    description="ShortGPT block influence on the layer-pruning calibration batches")


class WholeEntry(_Profile):
    """One option applied to every block's groups at once (see ``whole`` in the module docstring)."""

    option: str
    retained_pct: float = Field(gt=0, allow_inf_nan=False)
    seconds: float = Field(0.0, ge=0)


class ProfileCost(_Profile):
    """What measuring a profile cost (seconds are wall time on the profiling machine)."""

    evaluations: int = Field(ge=0, description="evaluator passes, reference included")
    load_seconds: float = Field(0.0, ge=0)
    reference_seconds: float = Field(0.0, ge=0, description="the intact model's pass (and its recording)")
    calibration_seconds: float = Field(0.0, ge=0, description="Wanda's input norms and the block influence")
    apply_seconds: float = Field(0.0, ge=0, description="quantizing / masking / restoring the groups")
    evaluate_seconds: float = Field(0.0, ge=0, description="evaluator passes after the reference")
    block_passes: int = Field(0, ge=0, description="block forward calls a full evaluation of every entry needs")
    block_passes_replayed: int = Field(0, ge=0, description="of those, replayed from the recording")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads")


class SensitivityProfile(_Profile):
    """A model's measured per-block sensitivities (see the module docstring for the JSON)."""

    format: Literal["fitplan.sensitivity_profile"] = PROFILE_FORMAT
    version: int = PROFILE_VERSION
    model: ProfileModel
    evaluator: ProfileEvaluator
    settings: ProfileSettings = ProfileSettings()
    entries: tuple[ProfileEntry, ...] = ()
    block_drop: tuple[BlockDrop, ...] = ()
    whole: tuple[WholeEntry, ...] = ()
    created: str | None = None
    total_seconds: float | None = Field(None, ge=0)
    cost: ProfileCost | None = None

    @field_validator("version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value > PROFILE_VERSION:
            raise ValueError(f"profile version {value} is newer than this fitplan understands ({PROFILE_VERSION}).")
        return value

    # -- lookups -------------------------------------------------------------------------------
    @cached_property
    def _table(self) -> dict[tuple[int, str, str], float]:
        return {(e.block, e.group, e.option): e.retained_pct for e in self.entries}

    @cached_property
    def _drops(self) -> dict[int, float]:
        return {d.block: d.retained_pct for d in self.block_drop}

    def effect(self, block: int, group: str, option: str) -> float | None:
        """Measured retained % of one option on one block's module group; None if not measured."""
        return self._table.get((block, group, option))

    def drop_effect(self, block: int) -> float | None:
        return self._drops.get(block)

    def block_influence(self) -> list[float] | None:
        """Every block's recorded influence in block order; None unless all blocks have one."""
        found = {d.block: d.influence for d in self.block_drop if d.influence is not None}
        if set(found) != set(range(self.model.num_blocks)):
            return None
        return [found[b] for b in range(self.model.num_blocks)]

    @cached_property
    def _additivity(self) -> dict[tuple[str, float], tuple[float, float]]:
        return {}

    def additivity(self, option: str, scale: float) -> tuple[float, float]:
        """(kappa, T): the measured whole-model damage of ``option`` over ``T``, the sum of its per-group
        damages (kappa = 1 when the profile has no whole-model entry for it). See :func:`option_damage`."""
        key = (option, scale)
        if key not in self._additivity:
            whole = next((w.retained_pct for w in self.whole if w.option == option), None)
            parts = [e.retained_pct for e in self.entries if e.option == option]
            total = damage_sum(parts, scale) if parts else 0.0
            self._additivity[key] = (1.0 if whole is None or not parts else damage_sum([whole], scale) / total, total)
        return self._additivity[key]

    @property
    def options(self) -> set[str]:
        return {e.option for e in self.entries}

    @property
    def n_measurements(self) -> int:
        return len(self.entries) + len(self.block_drop) + len(self.whole)

    def matches(self, spec) -> bool:
        """True if this profile was measured on ``spec``'s model (fingerprint, else name and depth)."""
        if self.model.num_blocks != spec.num_layers:
            return False
        if self.model.fingerprint and spec.config:
            return self.model.fingerprint == model_fingerprint(spec.config)
        return self.model.name == spec.name

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON atomically; refuses to overwrite an existing profile."""
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"{path} exists; profiles are never overwritten, choose another path.")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.model_dump_json(indent=1, exclude_none=True), encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SensitivityProfile":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise InvalidConfigError(f"cannot read sensitivity profile {path}: {error.strerror}.") from None
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidConfigError(f"{path}: not JSON ({error.msg}, line {error.lineno}).") from None
        if not isinstance(payload, dict) or payload.get("format") != PROFILE_FORMAT:
            raise InvalidConfigError(f"{path}: not a fitplan sensitivity profile (\"format\" must be "
                                     f"{PROFILE_FORMAT!r}).")
        try:
            return cls.model_validate(payload)
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidConfigError(f"{path}: {where}: {first['msg']}.") from None


def option_damage(profile: SensitivityProfile, effects: list[tuple[str, float]], scale: float) -> float:
    """Latent damage of (option, measured retained %) per-group effects.

    Per-group effects of an option need not add up (``whole`` in the module docstring). Second order, the
    damage of a set of groups with summed damages ``S`` is ``S + c S^2`` (pairwise interactions ``c d_i d_j``,
    a Taylor expansion around the intact model; HIGGS's linearity theorem is its first-order term). The
    whole-model entry fixes ``c``: ``T + c T^2 = kappa T`` for the sum ``T`` of all the option's groups, so

        D(S) = S * (1 + (kappa - 1) * S / T)

    which is the whole-model measurement for a uniform strategy (S = T) and the plain sum for one group
    among many. Options add (their interactions are the combination rule's, between parts)."""
    from planner.accuracy.metrics import DAMAGE_FLOOR

    by_option: dict[str, float] = {}
    for option, effect in effects:
        by_option[option] = by_option.get(option, 0.0) + max(-math.log(effect / 100.0) / scale, 0.0)
    total = 0.0
    for option, summed in by_option.items():
        kappa, whole_sum = profile.additivity(option, scale)
        share = min(summed / whole_sum, 1.0) if whole_sum > 0 else 1.0
        total += summed * (1.0 + (kappa - 1.0) * share)
    return total or DAMAGE_FLOOR


def option_gain(profile: SensitivityProfile, effects: list[tuple[str, float]], scale: float) -> float:
    """Latent gain the profile measured on these (option, retained %) per-group effects: the sum of
    ``ln(effect / 100) / scale`` over the groups that measured above 100%, each option's scaled by
    ``1 - share`` (its summed damage over the damage of all its groups, as in :func:`option_damage`).

    A group can measure a quality *gain* on the evaluator's set (on the tiny causal LM, 26 of 112 entries
    measure 100.00-100.16%). The damage model floors every group at zero, so its interval stops at 100%;
    an allocation that picks such groups measured up to 100.26%. The gain is the optimistic end of the
    interval (the point prediction does not count it): the groups' measured gains adding up. A uniform
    strategy (share 1) gets none: its whole-model entry already measured what the gains add up to
    (hqq-int3 on every group of the tiny LM: 99.92%, though its groups' gains sum to more than 100%)."""
    gains: dict[str, float] = {}
    damages: dict[str, float] = {}
    for option, effect in effects:
        latent = -math.log(effect / 100.0) / scale
        gains[option] = gains.get(option, 0.0) + max(-latent, 0.0)
        damages[option] = damages.get(option, 0.0) + max(latent, 0.0)
    total = 0.0
    for option, gain in gains.items():
        if gain > 0:
            _, whole_sum = profile.additivity(option, scale)
            share = min(damages[option] / whole_sum, 1.0) if whole_sum > 0 else 1.0
            total += gain * (1.0 - share)
    return total


def damage_sum(effects: list[float], scale: float) -> float:
    """Sum of the latent damages of measured retained % values (additive in log-quality)."""
    from planner.accuracy.metrics import DAMAGE_FLOOR

    return sum(max(-math.log(e / 100.0) / scale, 0.0) for e in effects) or DAMAGE_FLOOR
