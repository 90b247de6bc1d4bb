"""Peak resident memory (RSS) of an executor run on the CPU, predicted without running it.

A measured run (``executors.execute`` on ``device="cpu"``) is one process going through phases. How
its weights become resident matters more than their size (measured, transformers 5.23 + safetensors):

- tensors loaded in the checkpoint's own dtype stay **memory-mapped** from the safetensors file and
  become resident only when a forward touches them: every Linear weight, but only the looked-up rows
  of an embedding table (counted as zero);
- tensors that are converted while loading (a dtype cast, a bitsandbytes quantization) are new
  **anonymous** memory, resident at once, and the file pages of their float32 source are touched
  while converting: a transient while the file is mapped, which stays resident after loading when
  other tensors keep the file mapped (a bitsandbytes model with float32 compute keeps its embeddings
  mapped).

The RSS at each phase's peak is predicted as

    startup    = S (+ B when bitsandbytes is imported)
    load end   = startup + L[path] + W_converted (+ C_converted when the file stays mapped)
    load peak  = load end + T[path] x C_converted (when it does not)
    evaluate   = load end + W_mapped_touched + E[path] + A(evaluate batch)
    speed      = load end + W_mapped_touched + P[path] + A(speed batch)

- W_converted / W_mapped_touched: the stored weights, exact, from the format registry
  (``planner.formats.storage.group_storage`` via :func:`group_bytes`), split by how they are held
  (:func:`weight_residency`);
  C_converted: the float32 checkpoint bytes of the converted tensors;
- S: the interpreter with torch, transformers and fitplan's executors imported; B: bitsandbytes'
  import (its CPU libraries); L, E, P[path]: what the process adds beyond weights and activations when
  it loads (model code, tokenizer, allocator), evaluates and times forwards (math-library code pages,
  allocator caches); T[path]: the share of the converted tensors' file pages resident at once;
  A: the activations of one forward (:func:`activation_bytes`).

S, B, L, T, E and P depend on the machine and its software stack. The part that depends most (the
interpreter with torch and transformers imported, bitsandbytes' import, what loading any model of a
kind adds, what a first forward leaves resident: math-library code pages, thread pools, allocator
caches) is the **machine part**, :class:`MachineProfile`: ``executors.machine_profile`` measures it
with tiny probe models on the user's machine, once per machine and software stack
(:func:`machine_key`), and caches it in the user cache (:func:`machine_profile_path`). The remainder
is the **portable part**, kept as data in ``planner/data/cpu_profile.toml`` with the command that
measured it (``benchmarks/cpu_profile.py``, on random-initialised calibration models, not on the
models the executor benchmark checks): L[path] - load[kind], E[path] - forward[kind],
P[path] - forward[kind], T and the compression-step constants, plus the machine part of the machine
that measured them (``reference_machine``: used where this machine has not been measured, with a
warning). :func:`cpu_profile` combines the two. ``path`` is the model kind (causal-lm / encoder) and
how the weights are held: fp32, bf16, int8-fp32, int8-bf16, 4bit-fp32, 4bit-bf16 (bitsandbytes format
- compute dtype).

Never imports torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from planner._data import read_data_toml
from planner.errors import InvalidConfigError, UnsupportedError
from planner.execution import BNB_FORMATS, group_format, load_time_format
from planner.formats import dtype_bytes, format_names, get_format, group_size_variant_names
from planner.formats.storage import GroupStorage, group_storage
from planner.memory.result import GIB, CpuFigures, MemoryEstimate, MemoryTerm, sum_terms
from planner.models.derive import original_blocks
from planner.models.resolve import get_model
from planner.models.spec import ModelSpec, ParamGroup
from planner.strategy import CompressionStrategy, QuantizationSpec

Kind = Literal["causal-lm", "encoder"]
KINDS: tuple[str, ...] = ("causal-lm", "encoder")
PROFILE_FILE = "cpu_profile.toml"
PROFILE_SCHEMA = 2
MACHINE_SCHEMA = 1
MACHINE_PACKAGES = ("torch", "transformers", "bitsandbytes", "accelerate", "tokenizers", "safetensors")
CHECKPOINT_BYTES_PER_PARAM = 4  # float32 checkpoints (both test models; the usual HF upload of small models)
SAFE_MARGIN = 0.10  # safe bound: +10 %, the benchmark's tolerance


class PathConstants(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    load_overhead_bytes: float
    load_transient_fraction: float = Field(ge=0)
    evaluate_overhead_bytes: float
    speed_overhead_bytes: float


class StepsConstants(BaseModel):
    """Constants of a run whose strategy goes through the compression steps (float32 load, then
    module-level changes), measured with 50 % unstructured pruning + nf4 by module replacement."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    load_overhead_bytes: float
    compress_peak_fraction: float
    compress_retained_fraction: float
    evaluate_overhead_bytes: float
    speed_overhead_bytes: float


class MachineProfile(BaseModel):
    """The machine-dependent part, measured on one machine and software stack by
    ``executors.machine_profile`` (see the module docstring); ``key`` says which."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: int = MACHINE_SCHEMA
    key: dict[str, str]
    startup_bytes: float = Field(gt=0)
    bitsandbytes_import_bytes: float = Field(ge=0)
    load_bytes: dict[str, float]
    forward_bytes: dict[str, float]

    @model_validator(mode="after")
    def _every_kind(self) -> "MachineProfile":
        for name in ("load_bytes", "forward_bytes"):
            missing = set(KINDS) - set(getattr(self, name))
            if missing:
                raise ValueError(f"{name} lacks {sorted(missing)}")
        return self


class PortableProfile(BaseModel):
    """``cpu_profile.toml``: the constants beyond the machine part (portable), and the machine part of
    the machine that measured them (used where this machine has not been measured)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    measured_with: str
    calibration_models: str
    reference_machine: MachineProfile
    paths: dict[str, PathConstants]
    steps: dict[str, StepsConstants]


@dataclass(frozen=True)
class CpuProfile:
    """The constants a prediction uses: the portable part plus a machine part (this machine's when
    measured, ``measured_here``; else the reference machine's). Load overheads add the machine's
    ``load_bytes[kind]``, the evaluate and speed overheads of load-time paths its
    ``forward_bytes[kind]`` (the first forward happens in the evaluate phase)."""

    portable: PortableProfile
    machine: MachineProfile
    measured_here: bool

    @property
    def startup_bytes(self) -> float:
        return self.machine.startup_bytes

    @property
    def bitsandbytes_import_bytes(self) -> float:
        return self.machine.bitsandbytes_import_bytes

    @property
    def source(self) -> str:
        if self.measured_here:
            return f"machine part measured on this machine ({machine_profile_path()}), portable part: " \
                   f"{self.portable.measured_with}"
        return (f"machine part measured on the reference machine ({self.machine.key.get('system', '?')}, "
                f"torch {self.machine.key.get('torch', '?')}): "
                f"this one is not measured yet (python -m executors.machine_profile, or any isolated fitplan "
                f"run, measures it once); portable part: {self.portable.measured_with}")

    def steps_constants(self, kind: str) -> StepsConstants:
        if kind not in self.portable.steps:
            raise UnsupportedError(f"the CPU profile has no compression-step measurements for {kind!r}; "
                                   f"re-run benchmarks/cpu_profile.py.")
        residual = self.portable.steps[kind]
        return residual.model_copy(update={"load_overhead_bytes": residual.load_overhead_bytes
                                           + self.machine.load_bytes[kind]})

    def path(self, kind: str, path: str) -> PathConstants:
        key = f"{kind}.{path}"
        if key not in self.portable.paths:
            raise UnsupportedError(f"the CPU profile has no measurements for {key!r}; measured: "
                                   f"{', '.join(sorted(self.portable.paths))}. Re-run benchmarks/cpu_profile.py.")
        residual = self.portable.paths[key]
        forward = self.machine.forward_bytes[kind]
        return residual.model_copy(update={
            "load_overhead_bytes": residual.load_overhead_bytes + self.machine.load_bytes[kind],
            "evaluate_overhead_bytes": residual.evaluate_overhead_bytes + forward,
            "speed_overhead_bytes": residual.speed_overhead_bytes + forward})


def machine_key() -> dict[str, str]:
    """What the machine part depends on: interpreter, OS and C library, CPU architecture and count,
    thread settings and the exec packages' versions (read from metadata: imports nothing). Not the
    kernel release: virtual machines change it on every boot, and it does not move these figures."""
    return dict(_machine_key())


@cache
def _machine_key() -> dict[str, str]:
    import importlib.metadata
    import os
    import platform

    key = {"python": platform.python_version(), "system": platform.system(), "machine": platform.machine(),
           "libc": " ".join(platform.libc_ver()), "cpu_count": str(os.cpu_count()),
           "omp_num_threads": os.environ.get("OMP_NUM_THREADS", ""), "schema": str(MACHINE_SCHEMA)}
    for name in MACHINE_PACKAGES:
        try:
            key[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            key[name] = ""
    return key


def machine_profile_path(key: dict[str, str] | None = None) -> Path:
    import hashlib
    import json

    from planner.cache import cache_root

    digest = hashlib.sha256(json.dumps(key or machine_key(), sort_keys=True).encode()).hexdigest()[:16]
    return cache_root() / "cpu-machine" / f"{digest}.json"


def cached_machine_profile() -> MachineProfile | None:
    """This machine's measured part from the user cache, or None (missing, unreadable, invalid, or
    measured with another machine key)."""
    key = machine_key()
    try:
        profile = MachineProfile.model_validate_json(machine_profile_path(key).read_text())
    except (OSError, ValueError):
        return None
    return profile if profile.key == key else None


def save_machine_profile(profile: MachineProfile) -> Path:
    """Write ``profile`` to the user cache atomically (temp file + rename)."""
    import os

    path = machine_profile_path(profile.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    temporary.write_text(profile.model_dump_json(indent=2))
    os.replace(temporary, path)
    return path


@cache
def portable_profile() -> PortableProfile:
    raw = read_data_toml(PROFILE_FILE, PROFILE_SCHEMA)
    raw.pop("schema_version")
    try:
        return PortableProfile.model_validate(raw)
    except ValidationError as error:
        raise InvalidConfigError(f"{PROFILE_FILE} is incomplete or invalid ({error.error_count()} problem(s), first: "
                                 f"{error.errors()[0]['loc']}: {error.errors()[0]['msg']}); regenerate it with "
                                 f"`python benchmarks/cpu_profile.py --write`.") from None


def cpu_profile() -> CpuProfile:
    """The portable data with this machine's measured part when cached, else the reference machine's
    (read on each call: one small file, so a profile measured meanwhile, by any process, is used)."""
    portable = portable_profile()
    measured = cached_machine_profile()
    return CpuProfile(portable=portable, machine=measured or portable.reference_machine,
                      measured_here=measured is not None)


@dataclass(frozen=True)
class CpuWorkload:
    """What the measured process runs after loading: the evaluation batch and the timed batch."""

    kind: Kind
    evaluate_batch: int
    evaluate_seq_len: int
    speed_batch: int | None
    speed_seq_len: int | None
    evaluator: str

    @classmethod
    def default(cls, kind: Kind, *, speed: bool = True) -> "CpuWorkload":
        """The executors' defaults: perplexity 8 x 128 (causal LM) or fidelity 32 x 64 (encoder), and
        the same batch for the latency measurement."""
        if kind == "causal-lm":
            return cls(kind, 8, 128, 8 if speed else None, 128 if speed else None, "perplexity")
        return cls(kind, 32, 64, 32 if speed else None, 64 if speed else None, "fidelity")


def weights_path(strategy: CompressionStrategy) -> tuple[str, str, str]:
    """(profile path, weight format, compute dtype) of a quantization-only strategy applied at load."""
    spec = strategy.quantization
    if spec is None:
        return "fp32", "fp32", "fp32"
    fmt = load_time_format(spec)
    if fmt is None or strategy.distillation or strategy.sparsity or strategy.low_rank:
        raise UnsupportedError(f"CPU memory prediction covers strategies applied at load time; "
                               f"{strategy.summary()!r} goes through the compression steps.")
    compute = spec.compute_dtype
    if fmt in BNB_FORMATS:
        family = "int8" if fmt == "int8" else "4bit"
        return f"{family}-{'bf16' if compute != 'fp32' else 'fp32'}", fmt, compute
    return ("fp32" if fmt == "fp32" else "bf16"), fmt, compute


def group_bytes(spec: ModelSpec, fmt_name: str, compute_dtype: str, group: ParamGroup, *,
                quantize_lm_head: bool = False) -> GroupStorage:
    """The format registry's exact storage of ``group`` in ``fmt_name``, with the parts the format
    leaves unquantized (and the biases of quantized Linears) held in ``compute_dtype`` rather than the
    format's default compute dtype (the executors load bitsandbytes models with float32 compute too)."""
    fmt = get_format(fmt_name)
    stored = group_storage(spec, fmt, group, quantize_lm_head=quantize_lm_head, compute_dtype=compute_dtype)
    default = fmt.unquantized_dtype_resolved
    if fmt.family == "float" or compute_dtype == default:
        return stored
    element = dtype_bytes(compute_dtype)
    if not stored.quantized:
        return GroupStorage(group, False, group.params * element, compute_dtype)
    bias = group.count * (group.out_features or 0) * (element - dtype_bytes(default)) if group.bias else 0.0
    return GroupStorage(group, True, stored.bytes + bias, stored.stored_as)


def weights_under(spec: ModelSpec, quantization: QuantizationSpec | None,
                  original: Sequence[int] | None = None) -> tuple[float, dict[str, float]]:
    """Exact stored bytes of ``spec`` with every group in the format ``quantization`` gives it
    (:func:`planner.execution.group_format`, layer by layer), and the bytes per format. ``original``: the
    original model's index of each block of ``spec`` (:func:`planner.models.derive.original_blocks`) when
    ``spec`` is a depth-pruned model or a student: per-block formats are addressed by it.

    Follows ``executors.steps.quantize``: embeddings stay in the compute dtype when given a
    bitsandbytes format (its embedding modules cannot be saved), an lm_head given a format is
    quantized. ``dynamic-int8`` has no storage record in the format registry: UnsupportedError.
    """
    compute = quantization.compute_dtype if quantization is not None else "fp32"
    total = 0.0
    by_format: dict[str, float] = {}
    for group in spec.param_groups:
        layers = group.layers or (None,)
        per_layer = group.count // len(group.layers) if group.layers else group.count
        for layer in layers:
            name = group_format(quantization, group.component, group.kind, layer, spec.num_layers,
                                None if original is None or layer is None else original[layer])
            if group.kind == "embedding" and name in BNB_FORMATS:
                name = compute
            if name not in format_names() and name not in group_size_variant_names():
                raise UnsupportedError(f"the format registry has no storage record for {name!r}, so the weights "
                                       f"of this strategy cannot be predicted.")
            part = group.model_copy(update={"count": per_layer, "layers": (layer,) if layer is not None else ()})
            stored = group_bytes(spec, name, compute, part, quantize_lm_head=group.component == "lm_head")
            total += stored.bytes
            by_format[name] = by_format.get(name, 0.0) + stored.bytes
    return total, by_format


@dataclass(frozen=True)
class WeightResidency:
    """How the weights of a loaded model are held (bytes; see the module docstring)."""

    total: float
    converted: float  # anonymous memory created while loading (cast or quantized tensors)
    mapped: float  # still memory-mapped from the checkpoint
    mapped_touched: float  # the mapped tensors a forward reads in full (all but embedding tables)
    converted_source: float  # checkpoint bytes read to create the converted tensors


def weight_residency(spec: ModelSpec, fmt_name: str, compute_dtype: str,
                     checkpoint_dtype: str = "fp32") -> WeightResidency:
    """Split the format registry's exact weight bytes by how the loaded model holds them."""
    converted = mapped = touched = source = total = 0.0
    for group in spec.param_groups:
        item = group_bytes(spec, fmt_name, compute_dtype, group)
        total += item.bytes
        kept_as_is = not item.quantized and item.stored_as == checkpoint_dtype
        if kept_as_is:
            mapped += item.bytes
            if item.group.kind != "embedding":
                touched += item.bytes
        else:
            converted += item.bytes
            source += item.group.params * CHECKPOINT_BYTES_PER_PARAM
    return WeightResidency(total=total, converted=converted, mapped=mapped, mapped_touched=touched,
                           converted_source=source)


def activation_bytes(spec: ModelSpec, kind: str, batch: int, seq_len: int, dtype_bytes: int,
                     evaluator: str | None) -> dict[str, tuple[float, str]]:
    """Activations of one forward of ``batch x seq_len`` tokens: ``{part: (bytes, formula)}``.

    - ``layer``: the widest moment of one block: the MLP intermediates (gate, up, activated) and
      four hidden-sized tensors (q/k/v/o), plus float32 attention scores;
    - ``hidden_states`` (encoders): every layer's hidden states, returned for mean pooling;
    - ``logits`` (causal LMs): b*s*V logits in the compute dtype; perplexity adds the float32 shifted
      copy and cross-entropy's log-softmax.
    """
    h, inter, heads, vocab = spec.hidden_size, spec.mlp.intermediate_size, spec.num_heads, spec.vocab_size
    tokens = batch * seq_len
    parts = {"layer": (tokens * (3 * inter + 4 * h) * dtype_bytes + batch * heads * seq_len**2 * 4,
                       "b*s*(3*I + 4*H)*bytes + b*heads*s^2*4")}
    if kind == "encoder":
        parts["hidden_states"] = ((spec.num_layers + 1) * tokens * h * dtype_bytes, "(L+1)*b*s*H*bytes")
    elif evaluator == "perplexity":
        parts["logits"] = (tokens * vocab * dtype_bytes + 2 * batch * (seq_len - 1) * vocab * 4,
                           "b*s*V*bytes + 2*b*(s-1)*V*4")
    else:
        parts["logits"] = (tokens * vocab * dtype_bytes, "b*s*V*bytes")
    return parts


def _kind_of(spec: ModelSpec) -> Kind:
    if spec.architecture == "encoder":
        return "encoder"
    if spec.architecture == "decoder":
        return "causal-lm"
    raise UnsupportedError(f"{spec.name} is an encoder-decoder model; executors run causal LMs and encoders.")


def _term(key: str, label: str, value: float, formula: str, inputs: dict[str, Any], source: str) -> MemoryTerm:
    return MemoryTerm(key=key, label=label, gib=max(0.0, value) / GIB, formula=formula, inputs=inputs, source=source,
                      counted_in="device")


@dataclass
class _Phases:
    """Terms of every predicted phase: ``startup`` (imports), ``base`` (resident from the end of loading
    on, startup included) and what each later phase adds on top of ``base``."""

    startup: list[MemoryTerm]
    base: list[MemoryTerm]
    extra: dict[str, list[MemoryTerm]]
    weight_bytes: float
    label: str
    compute: str

    def totals(self) -> dict[str, float]:
        totals = {"startup": sum(t.gib for t in self.startup) * GIB, "load_end": sum(t.gib for t in self.base) * GIB}
        totals.update({name: sum(t.gib for t in self.base + terms) * GIB for name, terms in self.extra.items()})
        return totals


def _forward_phases(spec: ModelSpec, kind: str, workload: CpuWorkload, compute: str, resident: list[MemoryTerm],
                    overheads: tuple[float, float], label: str, measured: str) -> dict[str, list[MemoryTerm]]:
    """The evaluate and speed phases: what is resident, plus measured overhead and activations."""
    phases: dict[str, list[MemoryTerm]] = {}
    for phase, batch, seq_len, overhead, evaluator in (
            ("evaluate", workload.evaluate_batch, workload.evaluate_seq_len, overheads[0], workload.evaluator),
            ("speed", workload.speed_batch, workload.speed_seq_len, overheads[1], None)):
        if batch is None or seq_len is None:
            continue
        terms = list(resident) + [_term("runtime_overhead", f"{phase}: math libraries and allocator caches",
                                        overhead, f"{'E' if phase == 'evaluate' else 'P'}[{label}] (measured)",
                                        {"path": label}, measured)]
        for part, (value, formula) in activation_bytes(spec, kind, batch, seq_len, 4 if compute == "fp32" else 2,
                                                       evaluator).items():
            terms.append(_term("logits" if part == "logits" else "activations",
                               f"{phase}: {part.replace('_', ' ')} ({batch} x {seq_len})", value, formula,
                               {"batch": batch, "seq_len": seq_len}, "planner.memory.cpu.activation_bytes"))
        phases[phase] = terms
    return phases


def _startup(profile: CpuProfile, bitsandbytes: bool, measured: str) -> list[MemoryTerm]:
    terms = [_term("runtime_overhead", "python + torch + transformers imported", profile.startup_bytes,
                   "S (measured)", {}, measured)]
    if bitsandbytes:
        terms.append(_term("runtime_overhead", "bitsandbytes imported", profile.bitsandbytes_import_bytes,
                           "B (measured)", {}, measured))
    return terms


def _load_time_phases(spec: ModelSpec, kind: str, strategy: CompressionStrategy, workload: CpuWorkload,
                      profile: CpuProfile, measured: str) -> _Phases:
    path, fmt_name, compute = weights_path(strategy)
    constants = profile.path(kind, path)
    fmt = get_format(fmt_name).model_copy(update={"compute_dtype": compute})
    held = weight_residency(spec, fmt_name, compute)
    base = _startup(profile, fmt_name in BNB_FORMATS, measured)
    startup = list(base)
    base.append(_term("runtime_overhead", f"loading ({kind}, {path}): model code, tokenizer, allocator",
                      constants.load_overhead_bytes, "L[path] (measured)", {"path": path}, measured))
    base.append(_term("weights_quantized" if fmt.is_quantized else "weights_unquantized",
                      f"weights converted while loading ({fmt_name}, rest {compute})", held.converted,
                      "format registry bytes of the cast / quantized tensors", {"format": fmt_name}, fmt.source))
    if held.mapped:
        base.append(_term("load_transient", "checkpoint pages read while converting, kept mapped",
                          held.converted_source, "float32 bytes of the converted tensors (file stays mapped)",
                          {"mapped_bytes": held.mapped}, "planner.memory.cpu module docstring"))
    transient = 0.0 if held.mapped else constants.load_transient_fraction * held.converted_source
    extra = {"load": [_term(
        "load_transient", "checkpoint pages read while converting", transient,
        "T[path] x float32 bytes of the converted tensors",
        {"T": constants.load_transient_fraction, "converted_source_bytes": held.converted_source}, measured)]}
    touched = _term("weights_unquantized", "memory-mapped weights read by a forward (embedding tables excluded)",
                    held.mapped_touched, "checkpoint-dtype bytes of the non-embedding tensors kept as loaded",
                    {"mapped_bytes": held.mapped}, "planner.memory.cpu.weight_residency")
    extra.update(_forward_phases(spec, kind, workload, compute, [touched],
                                 (constants.evaluate_overhead_bytes, constants.speed_overhead_bytes), path, measured))
    return _Phases(startup=startup, base=base, extra=extra, weight_bytes=held.total, label=f"{kind}.{path}",
                   compute=compute)


def distillation_training_bytes(student: ModelSpec, kind: str, batch: int, seq_len: int) -> tuple[float, str]:
    """Working set of distilling into ``student`` (float32, AdamW), bytes and formula:

    - 16 bytes per student parameter: weights, gradients and AdamW's two moments;
    - per student layer, what autograd keeps for the backward pass, b*s*(12*H + 5*I)*4: the block
      input and both norm inputs/outputs with RMSNorm's float32 squares (~6 H), q, k, v and the
      attention output (~4 H, k/v narrower with GQA, rounded up), o_proj's and the residual's inputs
      (~2 H), gate, up, their activation and product and down's input (5 I); plus the attention
      probabilities b*heads*s^2*4;
    - causal LMs: 8 logit-sized float32 tensors, 8*b*s*V*4: student and teacher logits, the tempered
      log-softmax and softmax, the KL terms, the cross-entropy's log-softmax and two gradients.
    """
    h, inter, heads = student.hidden_size, student.mlp.intermediate_size, student.num_heads
    tokens = batch * seq_len
    value = 16 * student.params.total + student.num_layers * (tokens * (12 * h + 5 * inter) * 4
                                                              + batch * heads * seq_len**2 * 4)
    formula = "16*P_student + L*(b*s*(12*H + 5*I)*4 + b*heads*s^2*4)"
    if kind == "causal-lm":
        value += 8 * tokens * student.vocab_size * 4
        formula += " + 8*b*s*V*4"
    return value, formula


def _steps_phases(spec: ModelSpec, derived: ModelSpec, kind: str, strategy: CompressionStrategy,
                  workload: CpuWorkload, profile: CpuProfile, measured: str,
                  influence: Sequence[float] | None = None) -> _Phases:
    from planner.execution import uses_bitsandbytes

    constants = profile.steps_constants(kind)
    quantization = strategy.quantization
    compute = quantization.compute_dtype if quantization is not None else "fp32"
    weights, _ = weights_under(derived, quantization, original_blocks(spec.num_layers, strategy, influence))
    checkpoint = spec.params.total * CHECKPOINT_BYTES_PER_PARAM
    base = _startup(profile, uses_bitsandbytes(strategy), measured)
    startup = list(base)
    base.append(_term("runtime_overhead", f"loading ({kind}, float32, for the compression steps)",
                      constants.load_overhead_bytes, "L[steps] (measured)", {}, measured))
    compress = [_term("runtime_overhead", "compression steps: float32 copies, scores, new modules",
                      constants.compress_peak_fraction * checkpoint, "K x float32 checkpoint bytes",
                      {"K": constants.compress_peak_fraction, "checkpoint_bytes": checkpoint}, measured)]
    retained = [_term("runtime_overhead", "kept after the steps: modified weights, new modules, allocator",
                      constants.compress_retained_fraction * checkpoint, "R x float32 checkpoint bytes",
                      {"R": constants.compress_retained_fraction, "checkpoint_bytes": checkpoint}, measured)]
    if strategy.distillation is not None:
        distill = strategy.distillation
        value, formula = distillation_training_bytes(derived, kind, distill.batch_size, distill.seq_len)
        training = _term("optimizer_states", "distillation: student weights, gradients, AdamW moments, activations",
                         value, formula, {"student_params": derived.params.total, "batch": distill.batch_size,
                                          "seq_len": distill.seq_len}, "planner.memory.cpu.distillation_training_bytes")
        # glibc keeps the freed training buffers (many mid-size blocks) in its heap: resident from then on
        compress.append(training)
        retained.append(training)
    extra = {"load": [], "compress": compress}
    extra.update(_forward_phases(derived, kind, workload, compute, retained,
                                 (constants.evaluate_overhead_bytes, constants.speed_overhead_bytes), "steps",
                                 measured))
    return _Phases(startup=startup, base=base, extra=extra, weight_bytes=weights, label=f"{kind}.steps",
                   compute=compute)


def estimate_cpu_process_memory(model: Any, strategy: CompressionStrategy | None = None, *,
                                workload: CpuWorkload | None = None,
                                profile: CpuProfile | None = None,
                                influence: Sequence[float] | None = None) -> MemoryEstimate:
    """Predicted peak RSS of an isolated executor run of ``strategy`` on ``model`` on this CPU.

    ``model``: anything :func:`planner.get_model` accepts. ``influence``: each block's influence (a
    sensitivity profile's :meth:`~planner.accuracy.profile.SensitivityProfile.block_influence`): whole-layer
    pruning then keeps the blocks the executor keeps (else the evenly spaced assumption). Returns a MemoryEstimate whose
    ``peak_allocated_gib`` and ``device_total_gib`` are the predicted peak RSS, with the terms of the
    peak phase, ``cpu.phases_bytes`` = the predicted peak of every phase and
    ``cpu.weight_bytes`` = the exact stored weights of the resulting model.
    """
    from planner.execution import split_load_time_quantization
    from planner.models.derive import derive_spec, influence_note

    spec = get_model(model)
    strategy = strategy or CompressionStrategy()
    profile = profile or cpu_profile()
    kind = _kind_of(spec)
    workload = workload or CpuWorkload.default(kind)
    measured = f"measured: {profile.source}"
    _, remaining = split_load_time_quantization(strategy)
    if remaining.is_identity:
        derived = spec
        phases = _load_time_phases(spec, kind, strategy, workload, profile, measured)
    else:
        derived = derive_spec(spec, strategy, influence=influence)
        phases = _steps_phases(spec, derived, kind, strategy, workload, profile, measured, influence)
    totals = phases.totals()
    peak_phase = max(phases.extra, key=lambda name: totals[name])
    peak_terms = tuple(phases.base + phases.extra[peak_phase])
    peak_gib = totals[peak_phase] / GIB
    return MemoryEstimate(
        model=derived.name, params_total=derived.params.total, params_active=derived.params.active,
        precision=strategy.quantization.weights if strategy.quantization else "fp32", mode="inference",
        engine="hf-cpu", gpus=1, batch=workload.evaluate_batch, seq_len=workload.evaluate_seq_len,
        peak_allocated_gib=peak_gib,
        device_total_gib=peak_gib, safe_gib=peak_gib * (1 + SAFE_MARGIN), breakdown_gib=sum_terms(peak_terms),
        terms=peak_terms,
        assumptions={"device": "cpu", "path": phases.label, "compute_dtype": phases.compute, "peak_phase": peak_phase,
                     "checkpoint_dtype": "fp32", "profile_machine": profile.machine.key,
                     "machine_measured_here": profile.measured_here,
                     **({"kept_blocks": note} if (note := influence_note(strategy, influence)) else {})},
        warnings=() if profile.measured_here else (
            "this machine's start-up, loading and first-forward memory is not measured yet: the reference "
            "machine's is used (see assumptions.profile_machine); python -m executors.machine_profile "
            "measures it once",),
        peak_phase=peak_phase, cpu=CpuFigures(phases_bytes=totals, weight_bytes=phases.weight_bytes))
