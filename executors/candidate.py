"""The measured run of one candidate, and of the baseline reference; runs in the process that is measured.

:func:`run_candidate` is what the isolated child executes (``executors.isolation``) and what
``execute(..., isolate=False)`` calls directly. Phases, each with its own peak memory
(:class:`executors.measure.PhaseMeter`):

1. ``startup``: import torch + transformers (+ bitsandbytes when a format needs it);
2. ``load``: load the model directory, quantized at load time when the strategy allows it
   (:func:`planner.execution.split_load_time_quantization`);
3. ``compress``: the compression steps (distill -> prune -> low-rank -> quantize);
4. ``evaluate``: the evaluator against the cached baseline reference;
5. ``speed``: forward latency on one fixed batch;
6. ``save`` (optional): ``save_pretrained`` and the size on disk.

Everything it returns is JSON (the isolated child's result file).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from executors.evaluate import evaluator_from_spec, retained_fraction
from executors.evaluate.base import Reference
from planner.execution import uses_bitsandbytes
from planner.strategy import CompressionStrategy

# One fixed batch per kind; median of 3 timed forwards after 1 warm-up (each isolated candidate pays for them).
SPEED_DEFAULTS = {"causal-lm": {"batch_size": 8, "seq_len": 128, "warmup": 1, "repeats": 3},
                  "encoder": {"batch_size": 32, "seq_len": 64, "warmup": 1, "repeats": 3}}
Progress = Callable[[str], None]


def _imports(strategy: CompressionStrategy) -> Any:
    from executors._imports import import_bitsandbytes, import_torch, import_transformers

    torch = import_torch()
    import_transformers()
    if uses_bitsandbytes(strategy):
        import_bitsandbytes()
    return torch


def _meter(torch: Any, device: str) -> Any:
    from executors.measure import PhaseMeter

    return PhaseMeter(cuda=torch.cuda if device.startswith("cuda") else None)


def _phase(meter: Any, progress: Progress, name: str) -> Any:
    progress(name)
    return meter.phase(name)


def _training_batches(tokenizer: Any, corpus: Any, seed: int) -> Any:
    from executors.corpus import RandomWindows, load_corpus, token_ids

    return RandomWindows(token_ids(tokenizer, load_corpus(corpus).train), seed=seed)


def _speed_batch(loaded: Any, corpus: Any, settings: dict[str, int]) -> dict[str, Any]:
    """One fixed batch: validation text windows (causal LM) or the shipped sentences padded to
    ``seq_len`` (encoder)."""
    from executors.corpus import evaluation_windows, load_corpus, token_ids
    from executors.evaluate.sentences import default_sentences

    batch_size, seq_len = settings["batch_size"], settings["seq_len"]
    if loaded.kind == "causal-lm":
        ids = token_ids(loaded.tokenizer, load_corpus(corpus).validation)
        return {"input_ids": evaluation_windows(ids, seq_len, batch_size * seq_len).to(loaded.device)}
    sentences = list(default_sentences()[:batch_size])
    batch = loaded.tokenizer(sentences, padding="max_length", truncation=True, max_length=seq_len,
                             return_tensors="pt").to(loaded.device)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def model_facts(model: Any) -> dict[str, int]:
    from executors.measure import logical_params
    from executors.steps.storage import state_dict_bytes

    return {"params": logical_params(model), "weight_bytes": state_dict_bytes(model)}


def compute_reference(request: dict[str, Any], progress: Progress, evaluator: Any = None) -> dict[str, Any]:
    """Load the uncompressed model (float32), compute the evaluator's reference and cache it (a cached
    reference is returned without loading anything)."""
    from executors.evaluate.reference import cached_reference, reference_for
    from executors.loading import load_model, resolve_device

    evaluator = evaluator or evaluator_from_spec(request["evaluator"])
    reference = cached_reference(request["model_dir"], evaluator)
    if reference is not None:
        return {"value": reference.value, "facts": reference.facts, "cached": True}
    progress("startup")
    _imports(CompressionStrategy())
    progress("reference")
    loaded = load_model(request["model_dir"], device=resolve_device(request["device"]))

    def compute() -> Reference:
        reference = evaluator.reference(loaded.model, loaded.tokenizer)
        reference.facts.update(model_facts(loaded.model))
        return reference

    reference, cached = reference_for(request["model_dir"], evaluator, compute)
    return {"value": reference.value, "facts": reference.facts, "cached": cached}


def run_candidate(request: dict[str, Any], progress: Progress, evaluator: Any = None) -> dict[str, Any]:
    """Apply the strategy to the model and measure it (see the module docstring). ``request`` keys:
    model_dir, strategy (dict), evaluator (spec), device, corpus, seed, save_dir, work_dir, speed
    (dict or None), progress_bar (bool), isolated (bool). ``evaluator`` overrides the request's spec
    (in-process runs with an evaluator object)."""
    from executors.evaluate.reference import cached_reference

    strategy = CompressionStrategy.model_validate(request["strategy"])
    progress("startup")
    torch = _imports(strategy)
    from executors.environment import describe_environment
    from executors.loading import load_model, resolve_device
    from planner.execution import split_load_time_quantization

    device = resolve_device(request["device"])
    meter = _meter(torch, device)
    if request.get("isolated"):
        meter.phases.append(_startup_record())
    evaluator = evaluator or evaluator_from_spec(request["evaluator"])
    reference = cached_reference(request["model_dir"], evaluator)
    if reference is None:
        raise RuntimeError("the baseline reference is missing from the cache; execute() computes it first.")
    load_spec, remaining = split_load_time_quantization(strategy)
    out: dict[str, Any] = {"device": device, "steps": [], "quantized_at_load": None}

    with _phase(meter, progress, "load"):
        loaded = load_model(request["model_dir"], quantization=load_spec, device=device)
    out["model_kind"] = loaded.kind
    out["quantized_at_load"] = loaded.quantized_at_load
    model = loaded.model
    if not remaining.is_identity:
        with _phase(meter, progress, "compress"):
            model, reports = _apply_steps(model, remaining, loaded, evaluator, reference, request)
        out["steps"] = [report.model_dump(mode="json") for report in reports]
    model.eval()

    with _phase(meter, progress, "evaluate"):
        out.update(model_facts(model))
        score = evaluator.evaluate(model, loaded.tokenizer, reference)
    out["quality"] = {"evaluator": evaluator.name, "metric": evaluator.metric,
                      "higher_is_better": evaluator.higher_is_better, "compressed": score.value,
                      "baseline": reference.value,
                      "retained_pct": 100.0 * retained_fraction(score.value, reference.value,
                                                                evaluator.higher_is_better),
                      "extras": score.extras}
    out["reference_facts"] = dict(reference.facts)

    if request.get("speed") is not None:
        from executors.measure import measure_latency

        settings = {**SPEED_DEFAULTS[loaded.kind], **request["speed"]}
        with _phase(meter, progress, "speed"):
            batch = _speed_batch(loaded, request.get("corpus"), settings)
            latency = measure_latency(model, batch["input_ids"], attention_mask=batch.get("attention_mask"),
                                      warmup=settings["warmup"], repeats=settings["repeats"],
                                      cuda=meter.cuda)
        out["latency"] = latency.model_dump()

    if request.get("save_dir"):
        with _phase(meter, progress, "save"):
            out.update(_save(model, loaded.tokenizer, Path(request["save_dir"])))
    out["phases"] = [dataclasses.asdict(p) for p in meter.phases]
    out["environment"] = describe_environment(device, torch).model_dump()
    return out


def _startup_record() -> Any:
    """The startup phase: everything up to now (interpreter + imports). The process-wide VmHWM has not
    been reset yet, so it is exactly this phase's peak."""
    from executors.measure import PhaseRecord, read_status_bytes

    status = read_status_bytes()
    return PhaseRecord(name="startup", peak_rss_bytes=status.get("VmHWM"), rss_end_bytes=status.get("VmRSS"))


def _apply_steps(model: Any, strategy: CompressionStrategy, loaded: Any, evaluator: Any, reference: Reference,
                 request: dict[str, Any]) -> tuple[Any, list[Any]]:
    from executors.steps import StepContext, apply_strategy

    def score(candidate: Any) -> float:
        value = evaluator.evaluate(candidate, loaded.tokenizer, reference).value
        return retained_fraction(value, reference.value, evaluator.higher_is_better)

    work_dir = Path(request["work_dir"]) if request.get("work_dir") else None
    context = StepContext(batches=_training_batches(loaded.tokenizer, request.get("corpus"), request.get("seed", 0)),
                          evaluator=score, tokenizer=loaded.tokenizer, device=loaded.device, work_dir=work_dir,
                          seed=request.get("seed", 0), progress=bool(request.get("progress_bar")))
    return apply_strategy(model, strategy, context)


def _save(model: Any, tokenizer: Any, save_dir: Path) -> dict[str, Any]:
    from executors.measure import directory_bytes

    save_dir.mkdir(parents=True, exist_ok=True)
    try:
        from executors.export import save_compressed

        save_compressed(model, tokenizer, save_dir)  # config with its quantization_config: from_pretrained reloads it
    except Exception as error:  # a format transformers cannot serialise is reported, not fatal
        return {"save_error": f"{type(error).__name__}: {error}"}
    weights = sum(p.stat().st_size for p in save_dir.glob("*.safetensors"))
    return {"saved_to": str(save_dir), "disk_bytes": directory_bytes(save_dir), "weights_file_bytes": weights}
