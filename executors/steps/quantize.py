"""Quantization of an already-loaded (possibly distilled/pruned) model by module replacement.

Each Linear of the transformer blocks gets the format of its group (``QuantizationSpec.format_for``:
attention / mlp; the first/last ``keep_*_layers`` blocks get ``keep_format``) unless ``block_formats``
gives its (block, group) another one (the per-block allocation of a profiled search; blocks are numbered
as in the original model, also after an earlier step removed some: ``StepContext.kept_layers``), the output head gets
``lm_head`` and the token embeddings ``embeddings``; everything else (norms, embeddings without a
format, a BERT pooler) runs at ``compute_dtype``.

- ``int8``: bitsandbytes ``Linear8bitLt`` (LLM.int8, ``has_fp16_weights=False``, outlier threshold 6.0).
- ``nf4`` / ``fp4`` (``-dq`` = double quantization of the scales): bitsandbytes ``Linear4bit`` with the
  spec's compute dtype. Its fast CPU kernel needs ``out_features % 32 == 0`` and ``in_features % 64 == 0``
  (the 64-value quantization block; measured, bitsandbytes 0.50.2: otherwise "N must be divisible by
  block_n" or a reshape error). Other widths are quantized all the same and routed to bitsandbytes'
  dequantize-then-matmul path (``support_avx512bf16_for_cpu = False``); the report lists them.
- ``hqq-int8`` / ``hqq-int4`` / ``hqq-int3`` / ``hqq-int2`` (group 64, or ``-g32`` / ``-g128``): HQQ's
  ``HQQLinear`` (:mod:`executors.steps.hqq`), calibration-free, on any device.
- ``dynamic-int8``: torch dynamic quantization, int8 weights with one scale per output channel
  (``per_channel_dynamic_qconfig``); its kernels take fp32 activations only, so it needs
  ``compute_dtype='fp32'``.
- ``fp32`` / ``fp16`` / ``bf16``: casts. A module whose dtype differs from the compute dtype casts its
  input and output (``CastingLinear`` / ``CastingEmbedding``), so the rest of the model is unaffected.

bitsandbytes quantizes a weight when the module is moved to a device (``.to("cpu")``) and only uses its
int8/bf16 kernels in eval mode, so the quantized model is returned in eval mode. On CPU the 4-bit fast
path repacks the weight on the first forward (scales in bf16, double quantization undone); the state
dict converts back, so the reported bytes are those of the saved checkpoint format.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn import functional as F

from executors._imports import import_bitsandbytes
from planner.execution import UNSUPPORTED_FORMATS, executor_formats
from planner.errors import InvalidRequestError, UnsupportedError
from planner.strategy import CompressionStrategy, QuantizationSpec
from executors.steps import register_step
from executors.steps._recorder import Recorder
from executors.steps.context import StepContext
from executors.steps.hqq import check_hqq_sites, hqq_linear, is_hqq_format
from executors.steps.layout import LinearSite, ModelLayout, set_module
from executors.steps.linears import as_linear, is_dense
from executors.steps.report import NoEffectError, StepReport
from executors.steps.storage import state_dict_bytes

DENSE_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_EMBEDDING_QUANT_REASON = ("bitsandbytes 0.50.2 Embedding8bit/Embedding4bit raise NotImplementedError on "
                           "state_dict(), so a quantized embedding can neither be saved nor measured")
_FAST_4BIT_OUT, _FAST_4BIT_IN = 32, 64
_BLOCK_GROUPS = {"attention": "attention", "mlp": "mlp", "experts": "mlp", "shared_experts": "mlp", "router": "mlp"}


class CastingLinear(nn.Linear):
    """A Linear stored in another dtype than the activations: casts the input in and the output back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias
        return F.linear(x.to(self.weight.dtype), self.weight, bias).to(x.dtype)


class CastingEmbedding(nn.Embedding):
    """An embedding table stored in another dtype than the compute dtype: returns ``compute_dtype``."""

    compute_dtype: torch.dtype = torch.float32

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids).to(self.compute_dtype)


@register_step(QuantizationSpec)
def quantize(model: nn.Module, spec: QuantizationSpec, context: StepContext,
             strategy: CompressionStrategy) -> tuple[nn.Module, StepReport]:
    layout = ModelLayout(model)
    compute = DENSE_DTYPES[spec.compute_dtype]
    rec = Recorder("quantization", spec, model)
    plan = _plan(layout, spec, rec, context.kept_layers)
    _check_formats(spec, {fmt for _, fmt in plan} | ({spec.embeddings} if spec.embeddings else set()))
    check_hqq_sites([(site.name, site.module, fmt) for site, fmt in plan])

    replaced: set[int] = set()
    counts: dict[str, int] = {}
    slow: list[str] = []
    for site, fmt in plan:
        before = state_dict_bytes(site.module)
        # Conv1D (GPT-2) holds its weight transposed: quantized and cast modules are Linear layers
        source = site.module if fmt in DENSE_DTYPES and fmt == spec.compute_dtype else as_linear(site.module)
        new, detail = _quantized_module(source, fmt, compute, context.device)
        if source is not site.module:
            detail["converted_from"] = type(site.module).__name__
        if new is not site.module:
            set_module(model, site.name, new)
            replaced.add(id(new))
        if detail.get("cpu_kernel", "").startswith("slow"):
            slow.append(site.name)
        counts[fmt] = counts.get(fmt, 0) + 1
        params = source.weight.numel() + (source.bias.numel() if source.bias is not None else 0)
        rec.change(name=site.name, action=fmt, params_before=params, params_after=params,
                   bytes_before=before, bytes_after=state_dict_bytes(new), detail=detail)

    _cast_rest(model, layout, spec, compute, replaced, rec)
    model.eval()
    if all(fmt == spec.compute_dtype for fmt in counts) and state_dict_bytes(model) == rec.bytes_before:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in rec.skipped[:6]) or "no linear layers found"
        raise NoEffectError(f"{spec.summary()} changed no module: every weight already has the requested "
                            f"format or was skipped ({reasons}).")
    if slow:
        rec.notes.append(f"{len(slow)} 4-bit modules have widths the fast CPU kernel cannot take (out % "
                         f"{_FAST_4BIT_OUT}, in % {_FAST_4BIT_IN}) and run bitsandbytes' dequantize+matmul "
                         f"path: {', '.join(slow)}")
    if "dynamic-int8" in counts:
        rec.notes.append("torch.ao.quantization is deprecated (its warning says removal in 2.10; still present "
                         f"in {torch.__version__.split('+')[0]}); its warnings were silenced")
    rec.notes.append("model set to eval mode (bitsandbytes uses its quantized kernels only in eval mode)")
    applied = ", ".join(f"{n} {fmt}" for fmt, n in counts.items()) or "no module quantized"
    after = state_dict_bytes(model)
    return model, rec.finish(model, f"{spec.summary()}: {applied} linears; rest at {spec.compute_dtype}; "
                                    f"state dict {rec.bytes_before:,} -> {after:,} bytes",
                             params_after=rec.params_before)


def _plan(layout: ModelLayout, spec: QuantizationSpec, rec: Recorder,
          kept_layers: list[int] | None = None) -> list[tuple[LinearSite, str]]:
    """The format of each dense Linear; modules no group covers are recorded as skipped. ``kept_layers``: the
    original index of each current block (after whole-layer pruning or a derived student), which
    ``block_formats`` are addressed by."""
    plan = []
    for path in layout.expert_weights():
        rec.skip(path, f"fused 3-D expert tensor (experts x out x in): bitsandbytes and torch have no module for it; "
                       f"kept at {spec.compute_dtype}")
    for site in layout.linear_sites():
        if not is_dense(site.module):
            rec.skip(site.name, f"already quantized ({type(site.module).__name__})")
            continue
        if site.layer is not None:
            group = _BLOCK_GROUPS.get(site.component)
            if group is None:
                rec.skip(site.name, f"not matched to a planner parameter group (component {site.component}); "
                                    f"kept at {spec.compute_dtype}")
                continue
            num_layers = len(layout.model.get_submodule(site.stack))
            original = kept_layers[site.layer] if kept_layers and site.layer < len(kept_layers) else site.layer
            plan.append((site, spec.block_format(site.layer, group, num_layers, original)))
        elif site.component == "lm_head":
            fmt = spec.format_for("lm_head")
            if fmt is None:
                rec.skip(site.name, f"lm_head format not set: kept at {spec.compute_dtype}")
            elif layout.tied:
                rec.skip(site.name, "lm_head shares its weight with the token embeddings (tied); quantizing it "
                                    "would untie them and add a copy: it follows the embeddings' format")
            else:
                plan.append((site, fmt))
        else:
            rec.skip(site.name, f"outside the transformer blocks and not the lm_head (no QuantizationSpec "
                                f"group): kept at {spec.compute_dtype}")
    return plan


def _check_formats(spec: QuantizationSpec, formats: set[str]) -> None:
    for fmt in sorted(formats):
        if fmt in UNSUPPORTED_FORMATS:
            raise UnsupportedError(f"weight format {fmt!r} cannot run here: {UNSUPPORTED_FORMATS[fmt]}. "
                                   f"Runnable: {', '.join(runnable_formats())}.")
    if "dynamic-int8" in formats and spec.compute_dtype != "fp32":
        raise InvalidRequestError("format 'dynamic-int8' runs torch's dynamic int8 kernels, which take fp32 "
                                  f"activations only; set compute_dtype='fp32' (got {spec.compute_dtype!r}).")
    if spec.embeddings is not None and spec.embeddings not in DENSE_DTYPES:
        raise UnsupportedError(f"embeddings format {spec.embeddings!r}: {_EMBEDDING_QUANT_REASON}. "
                               f"Use one of {', '.join(DENSE_DTYPES)} (or leave it unset).")


def runnable_formats() -> tuple[str, ...]:
    return executor_formats("cpu")


def _quantized_module(linear: nn.Linear, fmt: str, compute: torch.dtype, device: str) -> tuple[nn.Module, dict]:
    if fmt in DENSE_DTYPES:
        dtype = DENSE_DTYPES[fmt]
        linear.to(dtype)
        if dtype != compute:
            linear.__class__ = CastingLinear
            return linear, {"dtype": fmt, "casts_activations": True}
        return linear, {"dtype": fmt}
    if fmt == "dynamic-int8":
        return _dynamic_int8(linear)
    if is_hqq_format(fmt):
        return hqq_linear(linear, fmt, compute, device)
    bnb = _bitsandbytes()
    weight = linear.weight.detach().to(torch.float32)
    bias = linear.bias
    if fmt == "int8":
        new = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias is not None,
                                  has_fp16_weights=False, threshold=6.0, device="meta")
        new.weight = bnb.nn.Int8Params(weight.clone(), requires_grad=False, has_fp16_weights=False)
        detail = {"library": "bitsandbytes", "module": "Linear8bitLt", "threshold": 6.0}
    else:
        quant_type, _, dq = fmt.partition("-")
        new = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias is not None,
                                compute_dtype=compute, compress_statistics=bool(dq), quant_type=quant_type,
                                device="meta")
        new.weight = bnb.nn.Params4bit(weight.clone(), requires_grad=False, compress_statistics=bool(dq),
                                       quant_type=quant_type, module=new)
        detail = {"library": "bitsandbytes", "module": "Linear4bit", "quant_type": quant_type,
                  "double_quant": bool(dq), "compute_dtype": str(compute).removeprefix("torch.")}
        fast = linear.out_features % _FAST_4BIT_OUT == 0 and linear.in_features % _FAST_4BIT_IN == 0
        if not fast:
            new.support_avx512bf16_for_cpu = False
            detail["cpu_kernel"] = (f"slow path: in {linear.in_features} x out {linear.out_features} is not "
                                    f"in % {_FAST_4BIT_IN} / out % {_FAST_4BIT_OUT}")
    if bias is not None:
        new.bias = nn.Parameter(bias.detach().to(compute).clone(), requires_grad=False)
    new = new.to(device)  # bitsandbytes quantizes the weight on the device move
    return new.eval(), detail


def _dynamic_int8(linear: nn.Linear) -> tuple[nn.Module, dict]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions.*deprecated.*")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao\..*")
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        from torch.ao.quantization import per_channel_dynamic_qconfig

        linear = linear.to(torch.float32)
        linear.qconfig = per_channel_dynamic_qconfig
        new = DynamicLinear.from_float(linear)
    return new, {"library": "torch.ao dynamic quantization", "qscheme": "per_channel_affine",
                 "engine": torch.backends.quantized.engine}


def _cast_rest(model: nn.Module, layout: ModelLayout, spec: QuantizationSpec, compute: torch.dtype,
               replaced: set[int], rec: Recorder) -> None:
    """Cast every floating parameter not owned by a quantized or explicitly cast module.

    The token embeddings go first so that a tied output head keeps the embeddings' dtype. Buffers (RoPE
    frequencies, position ids) keep their dtype: the models compute from them in fp32 and cast.
    """
    embedding = layout.input_embeddings
    embedding_dtype = DENSE_DTYPES[spec.embeddings] if spec.embeddings else compute
    skip = replaced | {id(m) for m in model.modules() if isinstance(m, CastingLinear)}
    seen: set[int] = set()
    for module in [embedding, *model.modules()]:
        if id(module) in skip:
            continue
        dtype = embedding_dtype if module is embedding else compute
        for param in module.parameters(recurse=False):
            if id(param) not in seen and param.is_floating_point():
                param.data = param.data.to(dtype)
            seen.add(id(param))
    if embedding_dtype != compute and isinstance(embedding, nn.Embedding):
        embedding.__class__ = CastingEmbedding
        embedding.compute_dtype = compute
        if layout.tied:
            layout.output_embeddings.__class__ = CastingLinear
        rec.notes.append(f"token embeddings stored as {spec.embeddings}, cast to {spec.compute_dtype} on lookup")


def _bitsandbytes():
    """Import bitsandbytes quietly: its CPU-kernel probe logs a harmless failure and its torch.compile
    decorators import torch internals that warn about the deprecated torch.jit.script_method."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script_method.*is deprecated.*")
        return import_bitsandbytes("bitsandbytes int8/4-bit quantization")
