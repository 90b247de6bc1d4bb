"""Export a compressed model as a directory ``from_pretrained`` loads again, with a model card.

- :func:`save_compressed` (also what ``fitplan run --save`` writes): ``save_pretrained`` safetensors
  weights and config plus the tokenizer. A model quantized by module replacement (after pruning or
  distillation, or any strategy the loader cannot apply) gets the ``quantization_config`` that
  transformers' own ``BitsAndBytesConfig`` loading would have written: its format is read from the
  bitsandbytes modules themselves, and the Linear layers left dense are listed in
  ``llm_int8_skip_modules`` so they stay dense on reload. Pruned and distilled models carry the config
  the steps rewrote. Formats a reloaded model could not reproduce are refused up front with
  :class:`~planner.errors.UnsupportedError` naming them (several bitsandbytes formats in one model,
  HQQ, torch dynamic int8, low-rank factors, per-module casts).
- :func:`export_model` (``fitplan export RESULT_DIR``): rebuilds the run's compressed model from its
  ``result.json`` (model directory + strategy, deterministic), saves it with :func:`save_compressed`,
  reloads it with ``AutoModel*.from_pretrained`` and compares the outputs on a fixed batch (the round
  trip is part of the export, its figures go in the card), and writes ``README.md``: how the model was
  made and what was measured.

bitsandbytes' CPU 4-bit kernel repacks a weight on its first forward (scales to bf16), so a model's
first and later forwards differ slightly; the round trip compares first forwards on both sides.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.errors import InvalidRequestError, UnsupportedError

CARD = "README.md"
ROUND_TRIP_TEXT = "The quick brown fox jumps over the lazy dog. Compression keeps what the model knows."
DEFAULT_ATOL = 1e-4  # max |difference| of outputs tolerated after a reload (relative to their scale)
_NOT_EXPORTABLE = {
    "HQQLinear": "HQQ formats (hqq-int*): transformers' HqqConfig quantizes at load time, but fitplan does not "
                 "write HQQ checkpoints yet",
    "DynamicQuantizedLinear": "torch dynamic int8 (dynamic-int8) modules have no transformers quantization config",
    "LowRankLinear": "low-rank factorised layers (low_rank) change the module structure, which from_pretrained "
                     "cannot rebuild from the config",
    "CastingLinear": "Linear layers stored in another dtype than the compute dtype (per-group fp16/bf16 casts) "
                     "have no transformers config",
}


@dataclass
class ExportResult:
    """Where the export went and how well the reloaded model reproduced the original."""

    out_dir: Path
    quantization: str | None
    max_abs_diff: float
    output_scale: float
    verified: bool
    reload_class: str


# -- saving --------------------------------------------------------------------------------------------
def quantization_config(model: Any) -> dict[str, Any] | None:
    """The transformers ``quantization_config`` (dict) of a model quantized by module replacement;
    None for a dense model. Raises UnsupportedError for what a reload cannot reproduce."""
    from executors.steps.linears import is_linear_like

    kinds: dict[tuple, list[str]] = {}
    dense: list[str] = []
    for name, module in model.named_modules():
        kind = type(module).__name__
        if kind in ("Linear8bitLt", "Linear4bit"):
            weight = module.weight
            if kind == "Linear8bitLt":
                key = ("int8", float(module.state.threshold))
            else:
                key = (weight.quant_type, bool(getattr(weight, "compress_statistics", False)),
                       str(module.compute_dtype).removeprefix("torch."))
            kinds.setdefault(key, []).append(name)
        elif kind in _NOT_EXPORTABLE and _NOT_EXPORTABLE[kind]:
            raise UnsupportedError(f"cannot export {name}: {_NOT_EXPORTABLE[kind]}. Exportable: dense models "
                                   f"(pruned, distilled, fp32/fp16/bf16) and one bitsandbytes format (int8, nf4, "
                                   f"fp4, -dq) for all quantized Linear layers.")
        elif kind.startswith("Dynamic") or "quantized" in type(module).__module__:
            raise UnsupportedError(f"cannot export {name}: {_NOT_EXPORTABLE['DynamicQuantizedLinear']}.")
        elif is_linear_like(module):
            dense.append(name)
    if not kinds:
        return None
    if len(kinds) > 1:
        raise UnsupportedError(f"cannot export a model whose Linear layers use {len(kinds)} bitsandbytes formats "
                               f"({', '.join(str(k[0]) for k in kinds)}): transformers' BitsAndBytesConfig holds one. Export a "
                               f"strategy with one weight format for the quantized layers.")
    key = next(iter(kinds))
    from executors._imports import import_transformers

    transformers = import_transformers()
    if key[0] == "int8":
        config = transformers.BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=key[1],
                                                 llm_int8_skip_modules=dense or None)
    else:
        config = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=key[0],
                                                 bnb_4bit_use_double_quant=key[1], bnb_4bit_compute_dtype=key[2],
                                                 llm_int8_skip_modules=dense or None)
    return config.to_dict()


def save_compressed(model: Any, tokenizer: Any, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Save ``model`` (safetensors + config with its quantization config) and ``tokenizer`` to ``out_dir``
    so that ``from_pretrained(out_dir)`` rebuilds it. Returns the quantization config written (or None)."""
    out = Path(out_dir)
    existing = getattr(model.config, "quantization_config", None)
    qconfig = None if existing is not None else quantization_config(model)
    if existing is None:
        _check_dense(model)
    if qconfig is not None:
        model.config.quantization_config = qconfig
    dtype = _dominant_dtype(model)
    if dtype is not None:
        model.config.dtype = dtype
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    written = json.loads((out / "config.json").read_text()).get("quantization_config")
    return {"quantization_config": written}


def _check_dense(model: Any) -> None:
    for name, module in model.named_modules():
        kind = type(module).__name__
        if _NOT_EXPORTABLE.get(kind):
            raise UnsupportedError(f"cannot export {name}: {_NOT_EXPORTABLE[kind]}.")


def _dominant_dtype(model: Any) -> str | None:
    """The dtype most floating-point parameters have (what ``from_pretrained`` should load them as)."""
    counts: dict[str, int] = {}
    for param in model.parameters():
        if param.is_floating_point():
            name = str(param.dtype).removeprefix("torch.")
            counts[name] = counts.get(name, 0) + param.numel()
    return max(counts, key=counts.get) if counts else None


# -- export from a run -----------------------------------------------------------------------------------
def find_result(path: str | os.PathLike) -> Path:
    """The ``result.json`` of a run: the file itself, a run directory (``<out>/<candidate>/<run id>``),
    a candidate directory holding one run, or an ``--out`` directory holding exactly one run."""
    given = Path(path).expanduser()
    if given.is_file() and given.name == "result.json":
        return given
    if given.is_file():
        raise InvalidRequestError(f"result {str(path)!r} is a file but not a run's result.json; pass a fitplan run's "
                                  f"candidate directory (it holds result.json) or its result.json.")
    if not given.is_dir():
        raise InvalidRequestError(f"result {str(path)!r} does not exist; pass a fitplan run's candidate directory "
                                  f"(it holds result.json) or its result.json.")
    if (given / "result.json").is_file():
        return given / "result.json"
    found = sorted(given.glob("*/result.json")) or sorted(given.glob("*/*/result.json"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise InvalidRequestError(f"{str(path)!r} holds no result.json (directly, in a run directory or in a "
                                  f"candidate directory); pass the directory fitplan run --out wrote.")
    names = ", ".join(str(p.parent.relative_to(given)) for p in found[:6]) + (" ..." if len(found) > 6 else "")
    raise InvalidRequestError(f"{str(path)!r} holds {len(found)} runs ({names}); pass one run directory.")


def export_model(result: str | os.PathLike, out_dir: str | os.PathLike | None = None, *,
                 atol: float = DEFAULT_ATOL) -> ExportResult:
    """Rebuild the compressed model of a run (``result``: see :func:`find_result`), save it to
    ``out_dir`` (default ``<candidate>/export``; must not exist or be empty), check the reload reproduces
    its outputs, and write the model card. Returns the :class:`ExportResult`; ``verified`` is False when
    the reloaded outputs differ by more than ``atol`` x their scale."""
    from executors.result import ExecutionResult

    result_path = find_result(result)
    record = ExecutionResult.model_validate_json(result_path.read_text())
    if record.status != "ok":
        raise InvalidRequestError(f"{result_path}: the run failed ({record.reason}); only successful runs export.")
    out = Path(out_dir).expanduser() if out_dir is not None else result_path.parent / "export"
    if out.exists() and any(out.iterdir()):
        raise InvalidRequestError(f"export directory {out} exists and is not empty; exports are never overwritten, "
                                  f"choose another --out.")
    model, tokenizer, kind = _rebuild(record)
    try:
        saved = save_compressed(model, tokenizer, out)
        reference = _outputs(model, tokenizer, kind)
        reloaded, class_name = _reload(out, kind, saved["quantization_config"])
        outputs = _outputs(reloaded, tokenizer, kind)
    except Exception:
        _remove_partial(out)
        raise
    diff = float((outputs - reference).abs().max())
    scale = float(reference.abs().max()) or 1.0
    qc = saved["quantization_config"]
    fmt = None if qc is None else ("int8" if qc.get("load_in_8bit") else qc.get("bnb_4bit_quant_type", "4bit") +
                                   ("-dq" if qc.get("bnb_4bit_use_double_quant") else ""))
    outcome = ExportResult(out_dir=out, quantization=fmt, max_abs_diff=diff, output_scale=scale,
                           verified=diff <= atol * max(scale, 1.0), reload_class=class_name)
    (out / CARD).write_text(model_card(record, outcome), encoding="utf-8")
    return outcome


def _remove_partial(out: Path) -> None:
    import shutil

    if out.exists():
        shutil.rmtree(out, ignore_errors=True)


def _rebuild(record: Any) -> tuple[Any, Any, str]:
    """The run's compressed model, rebuilt the way ``executors.candidate.run_candidate`` built it."""
    from executors.candidate import _apply_steps
    from executors.evaluate import EVALUATORS, get_evaluator
    from executors.evaluate.reference import cached_reference
    from executors.loading import load_model
    from planner.execution import split_load_time_quantization
    from planner.strategy import CompressionStrategy

    strategy = CompressionStrategy.model_validate(record.strategy)
    formats = _strategy_formats(strategy)
    for prefix, kind in (("hqq-", "HQQLinear"), ("dynamic-int8", "DynamicQuantizedLinear")):
        if any(f.startswith(prefix) for f in formats):  # refused before rebuilding anything
            raise UnsupportedError(f"cannot export {strategy.summary()!r}: {_NOT_EXPORTABLE[kind]}.")
    if strategy.low_rank is not None:
        raise UnsupportedError(f"cannot export {strategy.summary()!r}: {_NOT_EXPORTABLE['LowRankLinear']}.")
    load_spec, remaining = split_load_time_quantization(strategy)
    loaded = load_model(record.model_dir, quantization=load_spec, device="cpu")
    model = loaded.model
    if not remaining.is_identity:
        name = record.quality.evaluator if record.quality and record.quality.evaluator in EVALUATORS else None
        evaluator = get_evaluator(name, loaded.kind)
        reference = cached_reference(record.model_dir, evaluator)
        if reference is None:  # only the gradual schedule scores; the loaded model is the uncompressed one
            reference = evaluator.reference(model, loaded.tokenizer)
        model, _ = _apply_steps(model, remaining, loaded, evaluator, reference, {"corpus": None, "seed": 0})
    model.eval()
    return model, loaded.tokenizer, loaded.kind


def _strategy_formats(strategy: Any) -> set[str]:
    from planner.strategy import WEIGHT_FORMATS

    if strategy.quantization is None:
        return set()
    values = strategy.quantization.model_dump()
    found = set()
    for value in values.values():
        items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else [value]
        found.update(v for v in items if isinstance(v, str) and v in WEIGHT_FORMATS)
    return found


def _outputs(model: Any, tokenizer: Any, kind: str) -> Any:
    import torch

    batch = tokenizer([ROUND_TRIP_TEXT, ROUND_TRIP_TEXT[:40]], return_tensors="pt", padding=True)
    with torch.no_grad():
        output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    tensor = output.logits if kind == "causal-lm" else output.last_hidden_state
    return tensor.float() * batch["attention_mask"][..., None]


def _reload(out: Path, kind: str, qconfig: dict | None) -> tuple[Any, str]:
    from executors._imports import import_transformers

    transformers = import_transformers()
    auto = transformers.AutoModelForCausalLM if kind == "causal-lm" else transformers.AutoModel
    kwargs = {"device_map": {"": "cpu"}} if qconfig is not None else {}
    model = auto.from_pretrained(str(out), **kwargs)
    model.eval()
    return model, f"{auto.__name__}"


def model_card(record: Any, outcome: ExportResult) -> str:
    """The exported model's README.md: how it was made, what was measured, how to load it."""
    from planner.strategy import CompressionStrategy

    strategy = CompressionStrategy.model_validate(record.strategy)
    lines = [f"# {Path(record.model_dir).name}, compressed: {strategy.summary()}", "",
             f"Made by fitplan (`fitplan run` + `fitplan export`) from `{record.model_dir}` on {record.device}.", "",
             "## How it was made", "", "Strategy (fitplan `CompressionStrategy` JSON):", "", "```json",
             strategy.to_json(), "```", ""]
    for step in record.steps:
        lines.append(f"- step {step.get('step')}: {step.get('summary')}")
    if record.quantized_at_load:
        lines.append(f"- quantized while loading: {record.quantized_at_load} (transformers BitsAndBytesConfig)")
    lines += ["", "## What was measured", "", "| quantity | value |", "|---|---|"]
    q = record.quality
    if q is not None:
        lines.append(f"| quality ({q.evaluator}: {q.metric}) | {q.compressed:.4g} vs {q.baseline:.4g} uncompressed "
                     f"({q.retained_pct:.2f}% retained) |")
    if record.weight_bytes is not None:
        base = f" (uncompressed {record.weight_bytes_baseline / 2**20:,.1f} MiB)" if record.weight_bytes_baseline else ""
        lines.append(f"| weights in memory | {record.weight_bytes / 2**20:,.1f} MiB{base} |")
    if record.params is not None:
        lines.append(f"| parameters | {record.params:,} |")
    if record.latency is not None:
        lat = record.latency
        lines.append(f"| forward latency (batch {lat.batch_size} x {lat.seq_len}) | {lat.median_ms:.1f} ms median, "
                     f"{lat.tokens_per_s:,.0f} tokens/s |")
    if record.peak_rss_bytes is not None:
        lines.append(f"| peak process RSS | {record.peak_rss_bytes / 2**20:,.0f} MiB |")
    for c in record.comparisons:
        if c.predicted is not None:
            lines.append(f"| {c.quantity}: measured / predicted | {c.measured:.4g} / {c.predicted:.4g} {c.unit} |")
    verdict = "reproduces" if outcome.verified else "DOES NOT reproduce"
    lines += ["", "## Round trip", "",
              f"Reloaded with `{outcome.reload_class}.from_pretrained`, this directory {verdict} the compressed "
              f"model's outputs on a fixed batch: max |difference| {outcome.max_abs_diff:.3g} (outputs up to "
              f"{outcome.output_scale:.3g}).", "", "## Load it", "", "```python",
              f"from transformers import {outcome.reload_class}",
              f"model = {outcome.reload_class}.from_pretrained(\"path/to/this/directory\""
              + (", device_map=\"auto\")" if outcome.quantization else ")"), "```"]
    if outcome.quantization:
        lines += ["", f"Needs `bitsandbytes` ({outcome.quantization} weights; `quantization_config` in config.json)."]
    return "\n".join(lines) + "\n"
