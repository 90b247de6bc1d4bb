"""One candidate strategy, evaluated: derived model, predicted quality, memory, speed, cost, verdict.

:func:`evaluate_candidate` is the per-candidate function (``fitplan search`` calls it for each trial);
``planner.plan`` evaluates a whole grid through the same :class:`Evaluator`, which caches what
candidates share (derived architectures, estimator calls, sparse storage), so both give identical
figures for the same strategy.

How a strategy becomes figures:

1. ``planner.models.derive.derive_spec``: the architecture after distillation and structured pruning;
2. the estimator (``planner.planning.estimates.deployment``) on that architecture in the main weight
   format and KV dtype, plus exact weight-byte changes the single-format estimator does not know:
   per-group formats and kept first/last blocks (``planner.formats.storage`` bytes of each tensor in
   its own format) and 2:4 / unstructured storage (``sparse_storage``);
3. ``planner.accuracy.predict_quality`` on the original model and the strategy (corrected by the
   calibration store's residual model when one is given);
4. with a calibration store, memory and latency are multiplied by the store's measured/predicted factors
   for this model family on this device (``CalibrationStore.device_correction``, matched on
   :attr:`Evaluator.device_name`; a note on the candidate says so);
5. the limits of ``Constraints`` (``planner.planning.limits``).

Speedup is decode (or prefill) tokens/s over the uncompressed model in bf16 (fp16 without bf16) on the
same GPU count and engine. The context is clipped to the model's maximum positions (a note says so).

Deployment target ``local`` (:mod:`planner.planning.local`): step 2 is replaced by the figures a
measured executor run reports on this machine (peak memory of the run, the timed forward's latency);
speedup = the baseline's latency (the model as the executors load it) / the candidate's.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from planner.errors import FitplanError
from planner.formats import get_format
from planner.formats.storage import group_storage
from planner.models.derive import derive_spec, ffn_alignment, original_blocks
from planner.models.spec import ModelSpec
from planner.planning.constraints import Constraints
from planner.planning.estimates import Deployment, deployment
from planner.planning.grid import baseline_format
from planner.planning.limits import LIMITS, describe, violation_amounts
from planner.planning.sparse_storage import sparse_storage
from planner.strategy import CompressionStrategy, QuantizationSpec


class Violation(BaseModel):
    """A limit a candidate breaks, and by how much (in the limit's unit)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    constraint: str = Field(description="Constraints field, or 'hardware' for a format the GPU/engine cannot run")
    value: float | None = Field(description="the candidate's figure (None: unknown)")
    limit: float | None
    amount: float | None = Field(description="value - limit (max limits) or limit - value (min limits)")
    message: str


class Candidate(BaseModel):
    """An evaluated strategy. Memory is per GPU at the constraint's GPU count (safe bound); speed and cost
    are for ``gpus`` GPUs (that count when it fits, else ``gpus_needed``). Deployment target ``local``:
    memory is the predicted peak of the executors' run (CPU: process RSS; CUDA: peak allocated; no
    margin, it is compared with the measurement), ``latency_ms`` their timed forward, ``tokens_per_s``
    its throughput, speedup the baseline's latency over this one's; no price."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    strategy: CompressionStrategy
    summary: str
    quality: Any = Field(description="planner.accuracy.QualityPrediction")
    loss_pct: float
    params: int = Field(description="parameters of the derived model")
    memory_gib: float | None
    weights_gib: float | None = Field(description="resident weights, all GPUs")
    fits: bool
    gpus: int
    gpus_needed: int = Field(description="GPUs one copy needs (0: more than 16x the constraint's count)")
    tokens_per_s: float | None = Field(description="decode tokens/s of the whole batch ('local': of the timed "
                                       "forward)")
    prefill_tokens_per_s: float | None
    speedup: float | None
    latency_ms: float | None = Field(None, description="deployment target 'local': the executors' timed forward "
                                     "over their batch, ms (None elsewhere)")
    usd_per_hour: float | None
    usd_per_1m_tokens: float | None
    supported: bool = Field(description="the GPU and engine run every part of the strategy")
    feasible: bool
    violations: tuple[Violation, ...] = ()
    notes: tuple[str, ...] = ()


class Evaluator:
    """Evaluates strategies of one model under one set of constraints, sharing estimator work."""

    def __init__(self, spec: ModelSpec, constraints: Constraints, *, profile: Any = None, calibration: Any = None,
                 metric: str | None = None, device: str = "auto"):
        """``metric``: the executors' evaluator or metric family quality is predicted on ('fidelity',
        'perplexity', 'accuracy' (default)...). ``device``: with deployment target ``local``, the executors'
        device ('auto' as they choose it, 'cpu', 'cuda')."""
        from planner.accuracy.metrics import check_metric

        self.spec = spec
        self.profile = profile
        self.calibration = calibration
        self.metric = check_metric(metric) if metric is not None else "accuracy"  # family of predict_quality
        self.notes: tuple[str, ...] = ()
        positions = spec.max_position_embeddings
        if not constraints.is_local and positions and constraints.resolved_context > positions:
            self.notes = (f"context clipped from {constraints.resolved_context:,} to the model's {positions:,} "
                          "positions",)
            constraints = constraints.model_copy(update={"context": positions})
        self.constraints = constraints
        self.acc = constraints.gpu_accelerator()
        self._specs: dict[tuple, ModelSpec] = {}
        self._deployments: dict[tuple, Deployment] = {}
        self._estimates: dict[tuple, Any] = {}
        self._sparse: dict[tuple, Any] = {}
        self._mixed: dict[tuple, tuple[float, float]] = {}
        self._local: dict[str, Deployment] = {}
        if constraints.is_local:
            from planner.planning.local import executor_workload, local_device

            self.device = local_device(device)
            self.workload = executor_workload(spec)
            self.baseline_format = "fp32"  # the checkpoint as the executors load it
            # The speed reference: the model as the executors load it (the identity strategy).
            self._baseline = self._local_deployment(CompressionStrategy())
        else:
            self.baseline_format = baseline_format(constraints)
            # The speed reference: the uncompressed model at the constraint's GPU count, fitting or not.
            self._baseline = deployment(spec, self.baseline_format, None, constraints, more_gpus=False)

    # -- pieces -----------------------------------------------------------------------------
    def derived(self, strategy: CompressionStrategy) -> ModelSpec:
        sparsity = strategy.sparsity
        key = (strategy.distillation.summary() if strategy.distillation else None,
               sparsity.summary() if sparsity is not None and sparsity.structured else None,
               ffn_alignment(strategy))
        if key not in self._specs:
            self._specs[key] = derive_spec(self.spec, strategy, influence=self._influence())
        return self._specs[key]

    def _influence(self) -> list[float] | None:
        """The profile's per-block influence (whole-layer pruning keeps the blocks the executor keeps), if any."""
        if self.profile is None or not self.profile.matches(self.spec):
            return None
        return self.profile.block_influence()

    def _deployment(self, spec: ModelSpec, fmt: str, kv: str | None, weight_delta: float, read_delta: float,
                    arch: tuple) -> Deployment:
        key = (arch, fmt, kv, round(weight_delta), round(read_delta))
        if key not in self._deployments:
            self._deployments[key] = deployment(spec, fmt, kv, self.constraints, weight_delta_bytes=weight_delta,
                                                read_delta_bytes=read_delta, cache=self._estimates,
                                                key=(arch, fmt, kv))
        return self._deployments[key]

    def _mixed_delta(self, spec: ModelSpec, quant: QuantizationSpec, arch: tuple,
                     original: list[int] | None = None) -> tuple[float, float]:
        """Weight and read-byte changes of per-group and per-block formats (kept blocks, block overrides)
        against storing every block Linear in ``quant.weights``: each tensor in its own format
        (:func:`planner.strategy.QuantizationSpec.block_format`; ``original``: each block's index in the original
        model after a depth change, by which per-block formats are addressed)."""
        key = (arch, quant.model_dump_json(exclude={"kv_cache", "compute_dtype"}))
        if key in self._mixed:
            return self._mixed[key]
        main = get_format(quant.weights)
        weight = read = 0.0
        for group in spec.param_groups:
            base = group_storage(spec, main, group).bytes
            component = "mlp" if group.component in ("experts", "shared_experts") else group.component
            if group.layers and group.kind == "linear" and component in ("attention", "mlp"):
                per_layer: dict[str, float] = {}
                stored = 0.0
                for layer in group.layers:
                    name = quant.block_format(layer, component, spec.num_layers,
                                              None if original is None else original[layer])
                    if name not in per_layer:
                        per_layer[name] = group_storage(spec, get_format(name), group).bytes / len(group.layers)
                    stored += per_layer[name]
            elif component in ("embeddings", "lm_head") and quant.format_for(component):
                stored = group_storage(spec, get_format(quant.format_for(component)), group).bytes
            else:
                stored = base
            weight += stored - base
            if group.kind != "embedding":
                read += stored - base
        self._mixed[key] = (weight, read)
        return weight, read

    def _local_deployment(self, strategy: CompressionStrategy) -> Deployment:
        """Deployment figures of a measured executor run on this machine (planner.planning.local)."""
        key = strategy.model_dump_json()
        if key not in self._local:
            from planner.planning.local import local_figures

            run = local_figures(self.spec, strategy, self.device, self.workload, self._influence())
            memory = run.memory_gib
            fits = memory is not None and memory <= self.constraints.memory_limit_gib()
            self._local[key] = Deployment(memory_gib=memory, weights_gib=run.weights_gib, gpus=1,
                                          gpus_needed=1 if fits else 0, fits=fits, decode_tok_s=None,
                                          prefill_tok_s=run.tokens_per_s, usd_per_hour=None, usd_per_1m_tokens=None,
                                          latency_ms=run.latency_ms, notes=run.notes)
        return self._local[key]

    def figures(self, strategy: CompressionStrategy) -> tuple[ModelSpec, Deployment, list[str]]:
        """Derived spec, deployment figures and notes of ``strategy`` (raises FitplanError if impossible),
        corrected by the calibration store's factors for this device (:meth:`device_corrected`)."""
        spec, raw, notes = self._raw_figures(strategy)
        figures, more = self.device_corrected(raw)
        return spec, figures, notes + more

    def device_corrected(self, figures: Deployment) -> tuple[Deployment, list[str]]:
        """``figures`` with the calibration store's measured/predicted factors of this model family on this
        device applied (memory; latency and the timed forward's tokens/s), and the notes saying so. The
        constraint's GPU count decides ``fits`` again; speedups are unchanged (the baseline scales alike)."""
        changes: dict[str, Any] = {}
        notes: list[str] = []
        memory = self.device_correction("memory") if figures.memory_gib is not None else None
        if memory is not None:
            changes["memory_gib"] = value = figures.memory_gib * memory.factor
            if figures.gpus == self.constraints.gpus:
                changes["fits"] = fits = value <= self.constraints.memory_limit_gib()
                if fits != figures.fits:
                    changes["gpus_needed"] = figures.gpus if fits else 0
            notes.append(memory.note())
        latency = self.device_correction("latency") if figures.latency_ms is not None else None
        if latency is not None:
            changes["latency_ms"] = figures.latency_ms * latency.factor
            if self.constraints.is_local and figures.prefill_tok_s:
                changes["prefill_tok_s"] = figures.prefill_tok_s / latency.factor
            notes.append(latency.note())
        return (replace(figures, **changes) if changes else figures), notes

    def _raw_figures(self, strategy: CompressionStrategy) -> tuple[ModelSpec, Deployment, list[str]]:
        spec = self.derived(strategy)
        if self.constraints.is_local:
            figures = self._local_deployment(strategy)
            work = self.workload
            where = (f"predicted for the executors' run on {self.device.name} ({work.evaluator} "
                     f"{work.evaluate_batch} x {work.evaluate_seq_len} tokens)")
            return spec, figures, [where, *figures.notes]
        quant = strategy.quantization
        fmt = quant.weights if quant is not None else self.baseline_format
        kv = quant.kv_cache if quant is not None else None
        arch = (spec.name, spec.params.total, spec.num_layers)
        weight_delta = read_delta = 0.0
        notes: list[str] = []
        if quant is not None:
            weight_delta, read_delta = self._mixed_delta(
                spec, quant, arch, original_blocks(self.spec.num_layers, strategy, self._influence()))
        sparsity = strategy.sparsity
        if sparsity is not None and not sparsity.structured:
            skey = (arch, fmt, sparsity.model_dump_json(),
                    quant.model_dump_json(exclude={"kv_cache", "compute_dtype"}) if quant is not None else None)
            if skey not in self._sparse:
                self._sparse[skey] = sparse_storage(spec, get_format(fmt), sparsity,
                                                    engine=self.constraints.memory_engine, acc=self.acc, quant=quant)
            storage = self._sparse[skey]
            weight_delta += storage.resident_bytes - storage.dense_bytes
            read_delta += storage.read_bytes_delta
            notes.append(storage.note)
        if strategy.low_rank is not None:
            notes.append("low-rank: memory and speed not modelled (quality only)")
        return spec, self._deployment(spec, fmt, kv, weight_delta, read_delta, arch), notes

    def speedup(self, figures: Deployment) -> float | None:
        if self.constraints.is_local:
            mine, ref = figures.latency_ms, self.baseline.latency_ms
            return ref / mine if mine and ref else None
        metric = self.constraints.resolved_speedup_metric
        mine = figures.decode_tok_s if metric == "decode" else figures.prefill_tok_s
        ref = self.baseline.decode_tok_s if metric == "decode" else self.baseline.prefill_tok_s
        if not mine or not ref:
            return None
        return mine / ref

    @property
    def baseline(self) -> Deployment:
        """The speed reference (the uncompressed model), with this device's calibration factors applied."""
        return self.device_corrected(self._baseline)[0]

    @property
    def device_name(self) -> str | None:
        """Name of the device the figures are for (the constraints' accelerator; target local: the
        executors' device): calibration records of this device correct memory and latency."""
        if self.constraints.is_local:
            return self.device.name
        return self.acc.name if self.acc is not None else None

    def device_correction(self, quantity: str):
        """The calibration store's measured/predicted factor of ``quantity`` ('memory', 'latency') for this
        model family on this device (None without a store, a device or records)."""
        if self.calibration is None or self.device_name is None:
            return None
        correction = self.calibration.device_correction(self.spec.model_type, self.device_name, quantity,
                                                        self.spec.params.total)
        return correction if correction.n else None

    def predict(self, strategy: CompressionStrategy):
        from planner.accuracy import predict_quality

        return predict_quality(self.spec, strategy, profile=self.profile, calibration=self.calibration,
                               metric=self.metric)

    # -- one candidate ------------------------------------------------------------------------
    def evaluate(self, strategy: CompressionStrategy) -> Candidate:
        quality = self.predict(strategy)
        try:
            spec, figures, notes = self.figures(strategy)
        except FitplanError as error:
            reason = " ".join(str(error).split())
            return Candidate(strategy=strategy, summary=strategy.summary(), quality=quality,
                             loss_pct=quality.loss_pct, params=0, memory_gib=None, weights_gib=None, fits=False,
                             gpus=self.constraints.gpus, gpus_needed=0, tokens_per_s=None, prefill_tokens_per_s=None,
                             speedup=None, usd_per_hour=None, usd_per_1m_tokens=None, supported=False, feasible=False,
                             violations=(Violation(constraint="hardware", value=None, limit=None, amount=None,
                                                   message=reason),), notes=self.notes)
        speedup = self.speedup(figures)
        # 'local': the timed forward's tokens/s (the executors measure no decode)
        tokens_per_s = figures.prefill_tok_s if self.constraints.is_local else figures.decode_tok_s
        row = {"memory_gib": figures.memory_gib, "loss_pct": quality.loss_pct, "speedup": speedup,
               "usd_per_hour": figures.usd_per_hour, "usd_per_1m_tokens": figures.usd_per_1m_tokens,
               "tokens_per_s": tokens_per_s}
        violations = []
        for name, bound in self.constraints.active_limits().items():
            limit = LIMITS[name]
            value = row[limit.column]
            amount = float(violation_amounts(np.array([np.nan if value is None else value]), limit, bound)[0])
            if amount > 0:
                violations.append(Violation(constraint=name, value=value, limit=bound,
                                            amount=None if math.isinf(amount) else amount,
                                            message=describe(limit, value, bound)))
        return Candidate(strategy=strategy, summary=strategy.summary(), quality=quality, loss_pct=quality.loss_pct,
                         params=spec.params.total, memory_gib=figures.memory_gib, weights_gib=figures.weights_gib,
                         fits=figures.fits, gpus=figures.gpus, gpus_needed=figures.gpus_needed,
                         tokens_per_s=tokens_per_s, prefill_tokens_per_s=figures.prefill_tok_s,
                         speedup=speedup, usd_per_hour=figures.usd_per_hour,
                         usd_per_1m_tokens=figures.usd_per_1m_tokens, latency_ms=figures.latency_ms, supported=True,
                         feasible=not violations, violations=tuple(violations), notes=(*self.notes, *notes))


_EVALUATORS: list[Evaluator] = []
_EVALUATORS_KEPT = 8


def evaluator_for(spec: ModelSpec, constraints: Constraints, *, profile: Any = None,
                  calibration: Any = None, metric: str | None = None) -> Evaluator:
    """An :class:`Evaluator` for these inputs, reused across calls (a search evaluates one model under
    one set of constraints thousands of times: the baseline and the estimator answers are shared)."""
    from planner.accuracy.metrics import check_metric

    for evaluator in _EVALUATORS:
        same = evaluator.constraints is constraints or evaluator.constraints.model_dump() == constraints.model_dump()
        if same and evaluator.spec is spec and evaluator.profile is profile and evaluator.calibration is calibration \
                and evaluator.metric == (metric and check_metric(metric) or "accuracy"):
            return evaluator
    evaluator = Evaluator(spec, constraints, profile=profile, calibration=calibration, metric=metric)
    _EVALUATORS.insert(0, evaluator)
    del _EVALUATORS[_EVALUATORS_KEPT:]
    return evaluator


def evaluate_candidate(spec: Any, strategy: CompressionStrategy, constraints: Constraints, *, profile: Any = None,
                       calibration: Any = None, metric: str | None = None) -> Candidate:
    """Evaluate one strategy of ``spec`` (a ModelSpec or model name) under ``constraints``.

    A strategy the GPU or engine cannot run (or a model family that cannot be cut as asked) comes back
    with ``supported=False`` and a 'hardware' violation saying why, never as an exception.
    """
    from planner.models.resolve import get_model

    if not isinstance(constraints, Constraints):
        constraints = Constraints(**constraints)
    return evaluator_for(get_model(spec), constraints, profile=profile, calibration=calibration,
                         metric=metric).evaluate(strategy)
