"""``estimate_training_memory``: peak memory of one fine-tuning step per GPU, with its breakdown.

Called by ``planner.estimate_memory(model, precision, mode=...)`` for ``mode`` in full, lora, qlora,
freeze (see :mod:`planner.memory.training.setup` for how a request becomes terms and
:mod:`planner.memory.training.terms` for the phases).
"""

from __future__ import annotations

from typing import Any

from hardware_db import Accelerator
from planner.formats import WeightFormat
from planner.memory.devices import fits_on
from planner.memory.phases import peak_phase, phase_totals, safe_bytes, to_memory_terms
from planner.memory.result import GIB, MemoryEstimate, sum_terms, training_fields
from planner.memory.training.catalog import load_catalog
from planner.memory.training.setup import PreparedTraining, prepare_training
from planner.memory.training.terms import PHASES
from planner.memory.training.throughput import training_flops_per_token, training_time
from planner.models.spec import ModelSpec


def estimate_training_memory(spec: ModelSpec, fmt: WeightFormat, mode: str = "lora", *, batch: int = 1,
                             seq_len: int | None = None, gpus: int = 1, gpu: Accelerator | None = None,
                             **training: Any) -> MemoryEstimate:
    """Per-GPU memory of one fine-tuning step (see ``planner/memory/training/terms.py`` for the phases)."""
    prepared = prepare_training(spec, fmt, mode, batch=batch, seq_len=seq_len, gpus=gpus, gpu=gpu, **training)
    return build_training_estimate(prepared)


def build_training_estimate(p: PreparedTraining) -> MemoryEstimate:
    """The MemoryEstimate of a prepared request (the peak phase's terms, safe bound, fit, speed)."""
    spec, fmt, plan, options, recipe, optimizer, framework = (p.spec, p.fmt, p.plan, p.options, p.recipe,
                                                              p.optimizer, p.framework)
    batch, seq, gpus, gpu, raw, states, acts = p.batch, p.seq_len, p.gpus, p.gpu, p.raw, p.states, p.activations
    warnings, mode, settings, param_bytes, seq_note = p.warnings, p.mode, p.settings, p.param_bytes, p.seq_note
    deepspeed = options.sharding in ("zero1", "zero2", "zero3")
    phases = list(PHASES)
    totals = phase_totals(raw, phases, batch=batch, prompt=seq, total=seq, window=None)
    peak = peak_phase(totals)
    phase = next(p for p in phases if p.name == peak.name)
    terms = to_memory_terms(raw, phase, batch=batch, prompt=seq, total=seq, window=None)
    safe = safe_bytes(totals)
    host = states.host + batch * seq * (acts.host_per_token + acts.host_per_token_sq * seq)
    if optimizer.paged:
        warnings.append("paged optimizer states live in CUDA unified memory: nvidia-smi shows them while resident, "
                        "torch.cuda.max_memory_allocated does not, and they page out to host RAM when the GPU is full")
    extras = _extras(spec, plan, options, recipe, fmt, gpu, gpus, batch, seq, totals, peak, safe, acts, states, host)
    assumptions = {
        **options.as_dict(), "precision": fmt.name, "seq_len_note": seq_note, "recipe": recipe.description,
        "framework_profile": framework.description, "loss_implementation": framework.loss,
        "trainable_bytes_per_param": round(param_bytes, 3), "residual_stream_bytes": settings.residual_bytes,
        "micro_batch_per_gpu": batch, "effective_batch": batch * options.grad_accum * (
            gpus if options.sharding != "none" else 1),
        "first_layer_with_gradients": plan.first_grad_layer, "dropout_mask": "1-byte bool (CUDA native_dropout)",
        "packing": "peak memory is set by seq_len whether rows are packed or padded to it" if options.packing else
        "rows padded to seq_len (the longest sequence sets the peak)",
        "safe_rule": "safe = largest phase with every term at its upper bound",
    }
    if plan.adapters:
        assumptions["lora_targets"] = tuple(a.module for a in plan.adapters)
    if deepspeed:
        assumptions["deepspeed_layout"] = "16-bit params/grads + fp32 master weights, fp32 gradient partition, " \
                                          "fp32 optimizer states (DeepSpeed's estimator)"
    return MemoryEstimate(
        model=spec.name, params_total=spec.params.total, params_active=spec.params.active, precision=fmt.name,
        mode=mode, engine=framework.name, gpus=gpus, batch=batch, seq_len=seq,
        peak_allocated_gib=peak.allocated / GIB, device_total_gib=peak.device / GIB, safe_gib=safe / GIB,
        breakdown_gib=sum_terms(terms), terms=terms, host_ram_gib=host / GIB, assumptions=assumptions,
        warnings=tuple(warnings), **training_fields(extras))




def _extras(spec, plan, options, recipe, fmt, gpu, gpus, batch, seq, totals, peak, safe, acts, states,
            host) -> dict[str, Any]:
    flops = training_flops_per_token(spec, plan, seq, options.grad_checkpointing)
    extras: dict[str, Any] = {
        "peak_phase": peak.name, "phases_gib": {t.name: round(t.allocated / GIB, 4) for t in totals},
        "safe_allocated_gib": max(t.upper_allocated for t in totals) / GIB,
        "trainable_params": plan.trainable_params, "adapter_params": plan.adapter_params,
        "activation_bytes_per_token_per_layer": round(acts.layer_per_token, 1),
        "largest_saved_tensors_bytes_per_token": dict(acts.largest_tensors),
        "flops_per_token": flops.per_token, "flops_formula": flops.formula,
        "host_ram_gib": host / GIB,
    }
    if states.notes:
        extras["sharding_notes"] = list(states.notes)
    if gpu is not None:
        fits, headroom, pct = fits_on(safe / GIB, gpu)
        extras.update(gpu=gpu.name, usable_gib=gpu.memory_usable_gib, fits=fits, headroom_gib=headroom,
                      headroom_pct=pct)
        peak_tflops = gpu.peak_tflops(recipe.compute_dtype) if not gpu.is_generic else None
        if peak_tflops:
            mfu = options.mfu or load_catalog().throughput.mfu
            tokens = options.training_tokens or batch * seq * options.grad_accum * gpus
            time = training_time(tokens=tokens, flops_per_token=flops.per_token, gpus=gpus, peak_tflops=peak_tflops,
                                 mfu=mfu, usd_per_gpu_hour=gpu.cloud_usd_per_hour)
            extras.update(tokens_per_second=time.tokens_per_second, mfu=mfu, peak_tflops=peak_tflops,
                          mfu_source=load_catalog().throughput.source)
            if options.training_tokens:
                extras.update(training_tokens=options.training_tokens, training_hours=time.seconds / 3600,
                              gpu_hours=time.gpu_hours, cost_usd=time.cost_usd,
                              usd_per_gpu_hour=gpu.cloud_usd_per_hour)
    return extras
