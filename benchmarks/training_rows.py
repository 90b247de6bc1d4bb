"""Fine-tuning rows of the calibration benchmark: per-group training settings, the row evaluator and
the two training baselines. Imported by ``memory_accuracy.py``, which registers ``EVALUATORS``.

Each source group ran one documented stack; its settings below are facts about that stack (not
fitted). Per-row facts (batch, sequence, precision, optimizer, checkpointing, accumulation, LoRA rank,
trainable embeddings, GPUs) are read from the row's columns and notes.

Baselines, computed in the same units:

- ``16 B/param``: the rule "16 bytes per parameter" (fp32 weights + grads + AdamW) for the trained
  parameters, plus the frozen base at its storage size for LoRA/QLoRA (the rule says nothing else);
- ``LLaMA-Factory``: its README's hardware table for an x-billion-parameter model: full (mixed) 18x,
  full pure-bf16 8x, LoRA 2x, QLoRA-4 x/2 GB.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

import hardware_db
from planner import estimate_memory
from planner.memory.result import GIB
from planner.memory.training.trainable import plan_trainable

GB = 1e9


@dataclass(frozen=True)
class TrainingGroup:
    """The stack a source group trained with (framework profile, recipe defaults, DeepSpeed config)."""

    options: dict[str, Any] = field(default_factory=dict)
    why: str = ""
    compare: str = "measure_kind"
    compare_why: str = ""


QWEN1_DEEPSPEED = {"zero_bucket_elements": 200_000_000, "overlap_comm": True}
TRAINING_GROUPS: dict[str, TrainingGroup] = {
    "LG": TrainingGroup(
        {"framework": "litgpt", "optimizer": "adamw", "grad_checkpointing": "none", "attention": "flash"},
        "lit-gpt finetune/lora.py (2023-10): Fabric precision bf16-true (bf16-mixed in LG-23), torch AdamW, "
        "no activation checkpointing, lora_dropout 0.05 on q and v, chunked lm_head + cross-entropy, bnb 0.41"),
    "HFT": TrainingGroup(
        {"framework": "hf-2021", "optimizer": "adamw-loop", "attention": "eager", "cuda_module_loading": "eager"},
        "transformers 4.2x Trainer on PyTorch < 1.11 (softmax keeps its input) on bert-large (sequence "
        "classification): transformers' own AdamW "
        "(optim='adamw_hf', one parameter at a time), eager BERT attention with dropout 0.1, CUDA 11 context "
        "of 1343 MiB as measured in the same doc"),
    "QW1": TrainingGroup(
        {"framework": "qwen1", "optimizer": "adamw-torch-2.0", "grad_checkpointing": "full", "attention": "flash",
         "grad_accum": 8},
        "QwenLM/Qwen finetune.py: HF Trainer + peft (r=64, lora_dropout 0.05, c_attn/c_proj/w1/w2), gradient "
        "checkpointing, FlashAttention-2, batch 1 x GA 8; the README profiles with 'CUDA 11.8 and Pytorch 2.0', "
        "and without DeepSpeed the Trainer (transformers 4.32 training_args.py: default optim 'adamw_torch') "
        "steps torch.optim.AdamW, foreach on CUDA, whose PyTorch 2.0 version holds two whole-list temporaries "
        "(optimizer 'adamw-torch-2.0'; DeepSpeed rows step with DeepSpeed's own Adam); the remote code casts the model to bf16 itself and "
        "computes the loss on the logits as they come (fp32 under the Trainer's bf16 autocast, fp16/bf16 under "
        "DeepSpeed, which runs no autocast); Q-LoRA in fp16 with DeepSpeed ZeRO-2 (ds_config_zero2.json: "
        "reduce_bucket_size 2e8, overlap_comm); full fine-tuning and 72B LoRA with ZeRO-3",
        compare="device",
        compare_why="the README does not say how memory was read; at 256 tokens every LoRA and Q-LoRA row "
                    "(1.8B-72B) sits 1.6-3.2 GB above the allocated-memory estimate, a constant of the size of a "
                    "CUDA context plus cached blocks, so these rows are compared with the device total "
                    "(nvidia-smi); the allocated comparison is printed as well"),
}


def _gpus(row: pd.Series) -> int:
    match = re.search(r"x(\d+)", str(row["gpu"]))
    return int(match.group(1)) if match else 1


def _seq_len(row: pd.Series) -> int:
    return int(re.search(r"(\d+)", str(row["seq_len"])).group(1))


def row_options(row: pd.Series, group: str) -> tuple[str, str, dict[str, Any]]:
    """(mode, precision, training options) of one fine-tuning row."""
    mode = str(row["mode"]).removeprefix("finetune-")
    text, notes = str(row["precision"]).lower(), str(row["notes"]).lower()
    options = dict(TRAINING_GROUPS[group].options)
    rank = re.search(r"lora r(\d+)", notes)
    if rank:
        options["lora_rank"] = int(rank.group(1))
    if group == "LG":
        options["lora_targets"] = ("q", "v")
        mixed = "bf16-mixed" in text
        options["train_precision"] = "bf16-mixed" if mixed else "bf16"
        precision = "fp32" if mixed else ("nf4-dq" if "double-quant" in text else "nf4" if "nf4" in text else "bf16")
    elif group == "HFT":
        options["train_precision"] = "fp16-mixed" if "fp16" in text else "fp32"
        if "adafactor" in notes:
            options["optimizer"] = "adafactor"
        if "adam8bit" in notes:
            options["optimizer"] = "adamw-8bit"
        options["grad_checkpointing"] = "full" if "grad ckpt" in notes or "gradient_checkpointing" in notes else "none"
        accumulation = re.search(r"(?:ga |gradient_accumulation_steps=)(\d+)", notes)
        options["grad_accum"] = int(accumulation.group(1)) if accumulation else 1
        precision = "fp32"
    else:
        options["lora_targets"] = ("c_attn", "c_proj", "w1", "w2")
        options["train_embeddings"] = "emb+lm_head also trainable" in notes
        gpus = _gpus(row)
        zero3 = "zero-3" in notes or "zero3" in notes
        if mode == "qlora":
            options.update(QWEN1_DEEPSPEED, train_precision="fp16", sharding="zero2")
            precision = "gptq-int4"
        elif mode == "full" or zero3:
            options.update(train_precision="bf16", sharding="zero3")
            precision = "bf16"
        else:  # HF Trainer bf16=True without DeepSpeed: autocast over the bf16 model
            options.update(train_precision="bf16-mixed", sharding="ddp" if gpus > 1 else "none")
            precision = "bf16"
    return mode, precision, options


def training_baselines(spec, mode: str, precision: str, options: dict[str, Any]) -> tuple[float, float]:
    """(16 bytes/param rule, LLaMA-Factory table) in GiB for the whole job (all GPUs)."""
    billions = spec.params.total / 1e9
    if mode == "full":
        rule16 = 16.0 * spec.params.total
        factory = (8.0 if options.get("train_precision") == "bf16" else 18.0) * billions * GB
    else:
        plan = plan_trainable(spec, mode, lora_rank=options.get("lora_rank", 8),
                              lora_targets=options.get("lora_targets", ("q_proj", "v_proj")),
                              train_embeddings=options.get("train_embeddings", False))
        base_bytes = 0.5 if mode == "qlora" else 4.0 if precision == "fp32" else 2.0
        rule16 = base_bytes * spec.params.total + 16.0 * plan.trainable_params
        factory = (billions / 2 if mode == "qlora" else 2.0 * billions) * GB
    return rule16 / GIB, factory / GIB


def evaluate_finetune(row: pd.Series, spec, fmt: str, group: str, unit: float, total: str, result_type):
    """One fine-tuning row: the estimate's total named by measure_kind (all GPUs when the source sums them)."""
    mode, precision, options = row_options(row, group)
    gpus = _gpus(row)
    batch = int(row["batch"]) if not pd.isna(row["batch"]) else 1
    estimate = estimate_memory(spec, precision, mode=mode, batch=batch, seq_len=_seq_len(row), gpus=gpus, **options)
    scale = gpus if "sum GPUs" in str(row["measure_kind"]) else 1
    peak = estimate.peak_allocated_gib * scale
    if TRAINING_GROUPS[group].compare == "device":
        total = "device"
    point = estimate.device_total_gib * scale if total == "device" else peak
    measured = float(row["measured_gb"]) * unit / GIB
    rule16, factory = training_baselines(spec, mode, precision, options)
    return result_type(row["id"], group, row["mode"], measured, point, estimate.safe_gib * scale,
                       estimate.safe_allocated_gib * scale, peak, rule16, factory,
                       note=estimate.peak_phase)


def capacity_gib(gpu: str) -> float | None:
    """Usable capacity of a row's GPU text: the catalog entry when the text names one ('NVIDIA T4 16GB x1'
    -> T4: 14.75 GiB, what CUDA reports), else the printed size read as GiB (consumer GDDR cards sold as
    'NN GB' have NN GiB)."""
    for name in (gpu.split(" (")[0], re.sub(r"\s*\d+\s*GB?\b.*", "", gpu)):
        try:
            return hardware_db.get(name.strip()).memory_usable_gib
        except Exception:  # noqa: BLE001,S112 - not a catalog name: try the next reading
            continue
    match = re.search(r"(\d+)\s*GB", gpu)
    return float(match.group(1)) if match else None


def bound_rows(frame: pd.DataFrame, resolve) -> pd.DataFrame:
    """The fit/OOM rows (BNB blog, 16 GB T4, TRL SFTTrainer): does the estimate land on the measured side?

    ``measured_gb`` is ``<15.0`` (it fit) or ``>15.0`` (out of memory), the transcriber's reading of "a 16 GB
    card": the estimate is compared with the catalog's usable capacity of the row's GPU instead (T4: 14.75
    GiB, what CUDA can allocate), as for the second set; the point estimate of the device total and the safe
    bound are both reported.
    """
    rows = []
    for _, row in frame[frame["measure_kind"].str.startswith("bound_")].iterrows():
        notes, text = str(row["notes"]).lower(), str(row["precision"]).lower()
        mode = str(row["mode"]).removeprefix("finetune-")
        precision = "int8" if "int8" in text else "nf4-dq" if "nested" in text else "nf4"
        options = {"framework": "hf-2023", "attention": "eager",
                   "grad_checkpointing": "none" if "no grad ckpt" in notes else "full",
                   "grad_accum": 4, "train_precision": "fp16-mixed" if "fp16 compute" in text else "bf16-mixed"}
        estimate = estimate_memory(resolve(row["model"]), precision, mode=mode, batch=int(row["batch"]),
                                   seq_len=_seq_len(row), **options)
        fits = str(row["measured_gb"]).startswith("<")
        bound = capacity_gib(str(row["gpu"])) or float(str(row["measured_gb"]).strip("<>"))
        rows.append({"id": row["id"], "outcome": "fits" if fits else "OOM", "bound_gib": bound,
                     "device_total_gib": round(estimate.device_total_gib, 2), "safe_gib": round(estimate.safe_gib, 2),
                     "point_agrees": (estimate.device_total_gib < bound) == fits,
                     "safe_agrees": (estimate.safe_gib < bound) == fits})
    return pd.DataFrame(rows)


def evaluators(result_type) -> dict[str, Any]:
    """The fine-tuning modes of the CSV -> evaluator (bound to the benchmark's row-result type)."""
    def evaluate(row, spec, fmt, group, unit, total):
        return evaluate_finetune(row, spec, fmt, group, unit, total, result_type)
    return {"finetune-lora": evaluate, "finetune-qlora": evaluate, "finetune-full": evaluate}


def summarize_finetune(frame: pd.DataFrame) -> pd.DataFrame:
    """Median / p90 absolute % error, safe-bound hit rate and both baselines, per group and overall."""
    def pct(estimate, measured):
        return 100.0 * (estimate - measured) / measured
    frame = frame.assign(err=pct(frame.estimate_gib, frame.measured_gib), safe_ratio=frame.safe_gib / frame.measured_gib,
                         err_16=pct(frame.weights_only_gib, frame.measured_gib),
                         err_factory=pct(frame.llmfit_gib, frame.measured_gib))
    rows = []
    for group, part in [*frame.groupby("group"), ("ALL fine-tuning", frame)]:
        rows.append({
            "group": group, "rows": len(part), "median_abs_err_%": part.err.abs().median(),
            "p90_abs_err_%": part.err.abs().quantile(0.9), "safe_hit_%": 100.0 * (part.safe_ratio >= 1).mean(),
            "median_safe/measured": part.safe_ratio.median(),
            "16B/param_median_%": part.err_16.abs().median(), "16B/param_safe_hit_%": 100.0 * (part.err_16 >= 0).mean(),
            "LLaMA-Factory_median_%": part.err_factory.abs().median(),
            "LLaMA-Factory_safe_hit_%": 100.0 * (part.err_factory >= 0).mean(),
        })
    return pd.DataFrame(rows), frame


def print_finetune(results: list, frame_csv: pd.DataFrame, resolve, show_rows: bool) -> pd.DataFrame | None:
    """Print the fine-tuning summary; returns the fit/OOM rows of this set (scored with the second set's)."""
    if not results:
        return None
    summary, frame = summarize_finetune(pd.DataFrame([r.__dict__ for r in results]))
    print("\nFINE-TUNING ROWS (targets: median |error| <= 10%, safe bound >= measured on >= 90% of rows)")
    if show_rows:
        cols = ["id", "mode", "measured_gib", "estimate_gib", "err", "safe_gib", "safe_ratio", "err_16",
                "err_factory", "note"]
        print(frame[cols].round(3).to_string(index=False))
        print()
    print(summary.round(2).to_string(index=False))
    bounds = bound_rows(frame_csv, resolve)
    if len(bounds):
        print("\nfit/OOM bound rows (16 GB T4; not in the error statistics):")
        print(bounds.to_string(index=False))
    print("baselines: 16B/param = 16 bytes per trained parameter (+ the frozen base at its storage size); "
          "LLaMA-Factory = README table (full 18x / pure bf16 8x, LoRA 2x, QLoRA-4 x/2 GB for x B params)")
    allocated = frame.assign(err=100.0 * (frame.peak_gib - frame.measured_gib) / frame.measured_gib)
    print(f"allocated-memory comparison for every row: median |error| {allocated.err.abs().median():.2f}%")
    for group, settings in TRAINING_GROUPS.items():
        print(f"  {group}: {settings.why}")
        if settings.compare_why:
            print(f"      compared with the {settings.compare} total: {settings.compare_why}")
    return bounds
