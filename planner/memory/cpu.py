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
  (``planner.memory.weights.weight_bytes``), split by how they are held (:func:`weight_residency`);
  C_converted: the float32 checkpoint bytes of the converted tensors;
- S: the interpreter with torch, transformers and fitplan's executors imported; B: bitsandbytes'
  import (its CPU libraries); L, E, P[path]: what the process adds beyond weights and activations when
  it loads (model code, tokenizer, allocator), evaluates and times forwards (math-library code pages,
  allocator caches); T[path]: the share of the converted tensors' file pages resident at once;
  A: the activations of one forward (:func:`activation_bytes`).

S, B, L, T, E and P are machine- and software-specific, so they are **measured** and kept as data
in ``planner/data/cpu_profile.toml`` with the command that measured them
(``benchmarks/cpu_profile.py``, on random-initialised calibration models, not on the models the
executor benchmark checks). ``path`` is the model kind (causal-lm / encoder) and how the weights are
held: fp32, bf16, int8-fp32, int8-bf16, 4bit-fp32, 4bit-bf16 (bitsandbytes format - compute dtype).

Never imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from planner._data import read_data_toml
from planner.errors import UnsupportedError
from planner.execution import BNB_FORMATS, load_time_format
from planner.formats import get_format
from planner.memory.result import GIB, MemoryEstimate, MemoryTerm, sum_terms
from planner.memory.weights import weight_bytes
from planner.models.resolve import get_model
from planner.models.spec import ModelSpec
from planner.strategy import CompressionStrategy

Kind = Literal["causal-lm", "encoder"]
PROFILE_FILE = "cpu_profile.toml"
CHECKPOINT_BYTES_PER_PARAM = 4  # float32 checkpoints (both test models; the usual HF upload of small models)
SAFE_MARGIN = 0.10  # safe bound: +10 %, the benchmark's tolerance


class PathConstants(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    load_overhead_bytes: float
    load_transient_fraction: float = Field(ge=0)
    evaluate_overhead_bytes: float
    speed_overhead_bytes: float


class CpuProfile(BaseModel):
    """Measured constants of one machine + software stack (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    machine: dict[str, str]
    measured_with: str
    calibration_models: str
    startup_bytes: float
    bitsandbytes_import_bytes: float
    paths: dict[str, PathConstants]

    def path(self, kind: str, path: str) -> PathConstants:
        key = f"{kind}.{path}"
        if key not in self.paths:
            raise UnsupportedError(f"the CPU profile has no measurements for {key!r}; measured: "
                                   f"{', '.join(sorted(self.paths))}. Re-run benchmarks/cpu_profile.py.")
        return self.paths[key]


@cache
def cpu_profile() -> CpuProfile:
    raw = read_data_toml(PROFILE_FILE, 1)
    raw.pop("schema_version")
    return CpuProfile.model_validate(raw)


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
    fmt = get_format(fmt_name).model_copy(update={"compute_dtype": compute_dtype})
    stored = weight_bytes(spec, fmt)
    converted = mapped = touched = source = 0.0
    for item in stored.groups:
        kept_as_is = not item.quantized and item.stored_as == checkpoint_dtype
        if kept_as_is:
            mapped += item.bytes
            if item.group.kind != "embedding":
                touched += item.bytes
        else:
            converted += item.bytes
            source += item.group.params * CHECKPOINT_BYTES_PER_PARAM
    return WeightResidency(total=stored.total, converted=converted, mapped=mapped, mapped_touched=touched,
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


def estimate_cpu_process_memory(model: Any, strategy: CompressionStrategy | None = None, *,
                                workload: CpuWorkload | None = None,
                                profile: CpuProfile | None = None) -> MemoryEstimate:
    """Predicted peak RSS of an isolated executor run of ``strategy`` on ``model`` on this CPU.

    ``model``: anything :func:`planner.get_model` accepts. Returns a MemoryEstimate whose
    ``peak_allocated_gib`` and ``device_total_gib`` are the predicted peak RSS, with the terms of the
    peak phase and ``extras["phases_bytes"]`` = the predicted peak of every phase.
    """
    spec = get_model(model)
    strategy = strategy or CompressionStrategy()
    profile = profile or cpu_profile()
    kind = _kind_of(spec)
    workload = workload or CpuWorkload.default(kind)
    path, fmt_name, compute = weights_path(strategy)
    constants = profile.path(kind, path)
    fmt = get_format(fmt_name).model_copy(update={"compute_dtype": compute})
    held = weight_residency(spec, fmt_name, compute)
    compute_bytes = 4 if compute == "fp32" else 2
    measured = f"measured: {profile.measured_with}"

    base = [_term("runtime_overhead", "python + torch + transformers imported", profile.startup_bytes,
                  "S (measured)", {}, measured)]
    if fmt_name in BNB_FORMATS:
        base.append(_term("runtime_overhead", "bitsandbytes imported", profile.bitsandbytes_import_bytes,
                          "B (measured)", {}, measured))
    base.append(_term("runtime_overhead", f"loading ({kind}, {path}): model code, tokenizer, allocator",
                      constants.load_overhead_bytes, "L[path] (measured)", {"path": path}, measured))
    base.append(_term("weights_quantized" if fmt.is_quantized else "weights_unquantized",
                      f"weights converted while loading ({fmt_name}, rest {compute})", held.converted,
                      "format registry bytes of the cast / quantized tensors", {"format": fmt_name}, fmt.source))
    phases: dict[str, list[MemoryTerm]] = {}
    if held.mapped:
        base.append(_term("load_transient", "checkpoint pages read while converting, kept mapped",
                          held.converted_source, "float32 bytes of the converted tensors (file stays mapped)",
                          {"mapped_bytes": held.mapped}, "planner.memory.cpu module docstring"))
    load_end = sum(t.gib for t in base) * GIB
    transient = 0.0 if held.mapped else constants.load_transient_fraction * held.converted_source
    phases["load"] = base + [_term(
        "load_transient", "checkpoint pages read while converting", transient,
        "T[path] x float32 bytes of the converted tensors",
        {"T": constants.load_transient_fraction, "converted_source_bytes": held.converted_source}, measured)]
    touched = _term("weights_unquantized", "memory-mapped weights read by a forward (embedding tables excluded)",
                    held.mapped_touched, "checkpoint-dtype bytes of the non-embedding tensors kept as loaded",
                    {"mapped_bytes": held.mapped}, "planner.memory.cpu.weight_residency")
    for phase, batch, seq_len, overhead, evaluator in (
            ("evaluate", workload.evaluate_batch, workload.evaluate_seq_len, constants.evaluate_overhead_bytes,
             workload.evaluator),
            ("speed", workload.speed_batch, workload.speed_seq_len, constants.speed_overhead_bytes, None)):
        if batch is None or seq_len is None:
            continue
        acts = activation_bytes(spec, kind, batch, seq_len, compute_bytes, evaluator)
        terms = list(base) + [touched, _term(
            "runtime_overhead", f"{phase}: math libraries and allocator caches", overhead,
            f"{'E' if phase == 'evaluate' else 'P'}[path] (measured)", {"path": path}, measured)]
        for part, (value, formula) in acts.items():
            key = "logits" if part == "logits" else "activations"
            terms.append(_term(key, f"{phase}: {part.replace('_', ' ')} ({batch} x {seq_len})", value, formula,
                               {"batch": batch, "seq_len": seq_len}, "planner.memory.cpu.activation_bytes"))
        phases[phase] = terms
    totals = {name: sum(t.gib for t in terms) * GIB for name, terms in phases.items()}
    totals["startup"] = sum(t.gib for t in base[:2 if fmt_name in BNB_FORMATS else 1]) * GIB
    totals["load_end"] = load_end
    peak_phase = max(("load", "evaluate", "speed"), key=lambda name: totals.get(name, 0.0))
    peak_terms = tuple(phases[peak_phase])
    peak_gib = totals[peak_phase] / GIB
    return MemoryEstimate(
        model=spec.name, params_total=spec.params.total, params_active=spec.params.active, precision=fmt_name,
        mode="inference", engine="hf-cpu", gpus=1, batch=workload.evaluate_batch, seq_len=workload.evaluate_seq_len,
        peak_allocated_gib=peak_gib, device_total_gib=peak_gib, safe_gib=peak_gib * (1 + SAFE_MARGIN),
        breakdown_gib=sum_terms(peak_terms), terms=peak_terms,
        assumptions={"device": "cpu", "path": f"{kind}.{path}", "compute_dtype": compute, "peak_phase": peak_phase,
                     "checkpoint_dtype": "fp32", "profile_machine": profile.machine,
                     "workload": workload.__dict__},
        warnings=("CPU constants were measured on one machine and software stack (see assumptions."
                  "profile_machine); other CPUs, allocators or library versions shift them.",),
        extras={"device": "cpu", "phases_bytes": totals, "weight_bytes": held.total,
                "weights_converted_bytes": held.converted, "weights_mapped_bytes": held.mapped})
