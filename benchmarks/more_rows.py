"""The second published set (benchmarks/data/published_memory_measurements_more.csv): fine-tuning value
rows and fit/OOM rows, per source group. Imported by ``memory_accuracy.py``.

Every source group ran one documented stack; ``GROUPS`` holds those facts (recipe config, framework,
what the number measures), each with its source, and ``row_request`` reads the per-row facts (batch,
sequence, GPUs, optimizer, checkpointing, LoRA targets) from the row's columns and ``settings`` text.
No value is fitted: a row whose stack the source leaves open (model not named, sequence length or
batch not stated) is listed as skipped with the reason.

Scoring:

- value rows: |point - measured| / measured of the total the row's counter names (allocated,
  reserved, nvidia-smi), and whether the safe bound is >= the measurement;
- fit/OOM rows (``fits_bool``, ``fits_at_batch``, ``max_batch_fit`` = the batch that ran,
  ``alloc_at_OOM_GiB`` = a lower bound of the need): the point estimate of the device total must fall on
  the published side of the device's capacity (``<=`` for runs that fit, ``>`` for OOM); the safe bound
  is reported next to it.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from planner import estimate_memory
from planner.errors import FitplanError
from planner.memory.result import GIB
from same_measurements import once
from training_rows import capacity_gib, training_baselines

ROOT = Path(__file__).resolve().parents[1]
MORE_CSV = ROOT / "benchmarks" / "data" / "published_memory_measurements_more.csv"
GB, MIB = 1e9, 2**20

# kind -> (bytes per unit, which total of the estimate)
VALUE_KINDS: dict[str, tuple[float, str]] = {
    "peak_alloc_GB": (GB, "allocated"), "peak_alloc_GiB": (GIB, "allocated"), "peak_alloc_MiB": (MIB, "allocated"),
    "peak_reserved_GB": (GB, "reserved"), "peak_GB": (GB, "allocated"), "peak_GiB": (GIB, "allocated"),
    "peak_MB": (MIB, "allocated"), "nvidia-smi_MiB": (MIB, "device"), "nvidia-smi_GB": (GB, "device"),
    "reported_GB": (GB, "device"), "reported_GB_range": (GB, "device"),
}
BOUND_KINDS = ("fits_bool", "fits_at_batch", "max_batch_fit", "alloc_at_OOM_GiB")

# Phrases of the `settings` / `notes` columns -> training options (first match wins per option).
OPTIMIZERS: list[tuple[str, str]] = [
    ("pagedadamw8bit", "paged-adamw-8bit"), ("pagedadamw", "paged-adamw"), ("paged adamw", "paged-adamw"),
    ("adamw8bit", "adamw-8bit"), ("adam8bit", "adamw-8bit"), ("adamw_8bit", "adamw-8bit"),
    ("adafactor", "adafactor"), ("sgd", "sgd"), ("adamw (fused)", "adamw-fused"),
]


@dataclass(frozen=True)
class Request:
    """One estimate_memory call for a row (or why the row cannot be evaluated)."""

    model: str = ""
    precision: str = "bf16"
    mode: str = "lora"
    batch: int = 1
    seq_len: int = 0
    gpus: int = 1
    options: dict[str, Any] = field(default_factory=dict)
    skip: str = ""


@dataclass(frozen=True)
class Group:
    """How one source trained, and how to turn its rows into requests."""

    label: str
    why: str
    request: Callable[[pd.Series], Request]
    compare: str = ""


def _text(row: pd.Series) -> str:
    return f"{row['settings']} {row['notes']} {row['precision']} {row['engine']}".lower()


def _int(value: Any, default: int) -> int:
    return default if pd.isna(value) else int(float(value))


def _optimizer(text: str, default: str) -> str:
    for phrase, name in OPTIMIZERS:
        if phrase in text.replace(" ", "") or phrase in text:
            return name
    return default


# ---------------------------------------------------------------------------------------------------
# torchtune. Recipe facts from the configs named in the rows (recipes/configs/llama2|llama3_1/*.yaml at
# the README's date): dtype bf16 (pure bf16: weights, adapters, gradients, optimizer states), LoRA rank 8,
# enable_activation_checkpointing as listed, batch size from the table.
#   - before v0.2.1 (2024-03..05 READMEs, tutorials): nn.CrossEntropyLoss on the bf16 logits
#     (framework 'torchtune-2024'); alpaca_dataset(max_seq_len=512) padded per batch;
#   - from v0.2.1 on: CEWithChunkedOutputLoss (framework 'torchtune').
# ---------------------------------------------------------------------------------------------------
TT_LORA_QV = ("q_proj", "v_proj")
TT_LORA_ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
TT_ALPACA_SEQ = 512


def _tt_common(row: pd.Series, framework: str) -> dict[str, Any]:
    text = _text(row)
    options: dict[str, Any] = {"framework": framework, "train_precision": "bf16", "attention": "flash"}
    options["grad_checkpointing"] = "none" if "no act ckpt" in text else "full"
    return options


def _tt_mode(row: pd.Series) -> str:
    return str(row["mode"]).removeprefix("finetune-")


def torchtune_2024(row: pd.Series) -> Request:
    """torchtune READMEs of 2024-03..05 and the LoRA/QLoRA tutorials (CrossEntropyLoss on bf16 logits)."""
    text, mode, gpus = _text(row), _tt_mode(row), _int(row["gpus"], 1)
    if "config default" in text or "pre-release" in str(row["engine"]).lower():
        return Request(skip="pre-release README: the config's batch and sequence are not stated")
    if "phase=model init" in text:
        return Request(skip="memory after model init only (no training step)")
    options = _tt_common(row, "torchtune-2024")
    seq = _int(row["seq_len"], TT_ALPACA_SEQ)
    if mode == "full":
        options["optimizer"] = _optimizer(text, "adamw")
        if "optimizer_in_bwd" in text or "low_memory" in text or (gpus == 1 and "pagedadamw" in text.replace(" ", "")):
            options["optimizer_in_backward"] = True
        if "* = uses pagedadamw" in text.replace(" ", "") or "pagedadamw" in text.replace(" ", ""):
            options["optimizer"] = "paged-adamw"
        if gpus > 1:
            options["sharding"] = "fsdp"
    else:
        options["optimizer"] = "adamw"
        all_layers = "all layers" in text or "q,k,v,o + mlp" in text or mode == "qlora"
        options["lora_targets"] = TT_LORA_ALL + (("lm_head",) if "output proj" in text else ()) if all_layers \
            else TT_LORA_QV
        rank = re.search(r"rank (\d+)", text)
        options["lora_rank"] = int(rank.group(1)) if rank else 8
        options["lora_dropout"] = 0.0
        if gpus > 1:
            options["sharding"] = "fsdp"
    precision = "nf4" if mode == "qlora" else "bf16"
    return Request(str(row["model"]), precision, mode, _int(row["batch"], 2), seq, gpus, options)


def torchtune_2024_09(row: pd.Series) -> Request:
    """torchtune README 'Memory and training speed' (2024-09 on): Llama 3.1, packed 2048, batch 2, compile.

    llama3_1/8B_full_single_device: bnb PagedAdamW8bit + optimizer_in_bwd; 70B full: FSDP with CPU offload
    ('** = uses CPU offload with fused optimizer'); LoRA configs: q_proj, v_proj, output_proj + MLP, rank 8;
    QLoRA the same on an NF4 base; all with CEWithChunkedOutputLoss and activation checkpointing. The 24 GB
    RTX 4090 rows add activation offloading (enable_activation_offloading, the docs' memory-optimization
    recipe for consumer GPUs); the 48 GB A6000 rows run the same recipes without checkpointing or
    offloading.
    """
    mode, gpus = _tt_mode(row), _int(row["gpus"], 1)
    options: dict[str, Any] = {"framework": "torchtune", "train_precision": "bf16", "attention": "flash",
                               "packing": True, "compile": True}
    consumer = "4090" in str(row["gpu"])
    options["grad_checkpointing"] = "full" if consumer or gpus > 1 else "none"
    options["activation_offload"] = consumer
    if mode == "full":
        if gpus == 1:
            options.update(optimizer="paged-adamw-8bit", optimizer_in_backward=True)
        else:
            options.update(optimizer="adamw-fused", sharding="fsdp", offload="params")
    else:
        options.update(optimizer="adamw", lora_rank=8, lora_dropout=0.0,
                       lora_targets=("q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))
        if gpus > 1:
            options["sharding"] = "fsdp"
    precision = "nf4" if mode == "qlora" else "bf16"
    return Request(str(row["model"]), precision, mode, _int(row["batch"], 2), _int(row["seq_len"], 2048), gpus, options)


def hf_perf_train(row: pd.Series) -> Request:
    """transformers docs 'Efficient training on a single GPU' (bert-large, V100, seq 512): the same
    stack as the first set's HFT group (see training_rows.TRAINING_GROUPS['HFT'])."""
    text = _text(row)
    options: dict[str, Any] = {"framework": "hf-2021", "optimizer": "adamw-loop", "attention": "eager",
                               "cuda_module_loading": "eager"}
    options["train_precision"] = "fp16-mixed" if "fp16" in text else "fp32"
    if "adafactor" in text:
        options["optimizer"] = "adafactor"
    if "adam8bit" in text:
        options["optimizer"] = "adamw-8bit"
    options["grad_checkpointing"] = "full" if "gc" in text.split() or "gradient checkpointing" in text or \
        "+ gc" in text else "none"
    ga = re.search(r"gradient_accumulation_steps=(\d+)", text)
    options["grad_accum"] = int(ga.group(1)) if ga else 1
    return Request("bert-large-uncased", "fp32", "full", _int(row["batch"], 1), 512, 1, options)


def llamafactory(row: pd.Series) -> Request:
    """LLaMA-Factory README performance comparison: LLaMA2-7B, LoRA rank 8 on q_proj/v_proj (its
    default lora_target then), batch 4, GA 2, max length 1024, gradient checkpointing on (LLaMA-Factory
    enables it unless disable_gradient_checkpointing), bf16; 'HF' = transformers eager attention."""
    engine = str(row["engine"])
    if "unsloth" in engine.lower():
        return Request(skip="Unsloth kernels are not a modelled framework")
    mode = _tt_mode(row)
    options = {"framework": "hf", "grad_checkpointing": "full", "grad_accum": 2, "lora_rank": 8,
               "lora_targets": ("q_proj", "v_proj"), "attention": "flash" if "FA2" in engine else "eager"}
    return Request(str(row["model"]), "nf4" if mode == "qlora" else "bf16", mode, _int(row["batch"], 4),
                   _int(row["seq_len"], 1024), 1, options)


PEFT_ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def peft_sharded(row: pd.Series) -> Request:
    """PEFT docs 'DeepSpeed' / 'FSDP' guides (Llama-2-70B, TRL SFT, LoRA r8 on all linear layers,
    gradient checkpointing, flash attention) and the BART-large ZeRO-3 + CPU offload example
    (examples/conditional_generation/peft_lora_seq2seq_accelerate_ds_zero3_offload.py: LoRA r8 on q, v,
    batch 8, max_length 128, fp32 model)."""
    text, mode, gpus = _text(row), _tt_mode(row), _int(row["gpus"], 1)
    model = str(row["model"])
    if "bart" in model:
        if "2654" in str(row["value"]):
            return Request(skip="evaluation-loop peak (generate), not the training step")
        options = {"framework": "hf", "sharding": "zero3", "offload": "params", "lora_rank": 8,
                   "lora_targets": ("q", "v"), "train_precision": "fp32", "attention": "eager", "lora_dropout": 0.1}
        return Request(model, "fp32", "lora", 8, 128, 1, options)
    options = {"framework": "hf", "grad_checkpointing": "full", "lora_rank": 8, "lora_targets": PEFT_ALL_LINEAR,
               "attention": "flash", "train_precision": "bf16-mixed"}
    if "deepspeed" in text:
        options["sharding"] = "zero3"
    else:
        options["sharding"] = "fsdp"
        if "cpu offload" in text and "no offload" not in text and "without cpu offloading" not in text:
            options["offload"] = "params"
    return Request(model, "nf4-dq" if mode == "qlora" else "bf16", mode, _int(row["batch"], 1),
                   _int(row["seq_len"], 2048), gpus, options)


def philschmid_fsdp_qlora(row: pd.Series) -> Request:
    """philschmid 'FSDP + Q-LoRA' Llama-3-70B: TRL SFTTrainer, FSDP full shard + CPU offload, SDPA,
    gradient checkpointing, LoRA r16 on all linear layers, seq 3072, batch 1."""
    options = {"framework": "hf", "grad_checkpointing": "full", "sharding": "fsdp", "offload": "params",
               "lora_rank": 16, "lora_targets": PEFT_ALL_LINEAR, "attention": "flash"}
    return Request(str(row["model"]), "nf4", "qlora", 1, 3072, _int(row["gpus"], 4), options)


def not_evaluable(reason: str) -> Callable[[pd.Series], Request]:
    return lambda row: Request(skip=reason)


GROUPS: dict[str, Group] = {
    "M-torchtune_readme_memory_and_": Group("TT-2409", "torchtune README 2024-09+ (Llama 3.1, packed 2048, bs 2)",
                                           torchtune_2024_09),
    "M-torchtune_readme": Group("TT-2403", "torchtune README 2024-03..05 (Llama 2, bs 2-4)", torchtune_2024),
    "M-torchtune_lora_tutorial": Group("TT-tut", "torchtune LoRA/QLoRA tutorials (Llama 2 7B, bs 2)",
                                       torchtune_2024),
    "M-torchtune_qlora_tutorial": Group("TT-tut", "torchtune LoRA/QLoRA tutorials (Llama 2 7B, bs 2)",
                                        torchtune_2024),
    "M-transformers_docs_perf_train": Group("HFT-2", "transformers docs perf_train_gpu_one (bert-large)",
                                            hf_perf_train),
    "M-llamafactory_performance_com": Group("LLaMA-F", "LLaMA-Factory README comparison (LLaMA2-7B)", llamafactory),
    "M-peft_docs_deepspeed": Group("PEFT", "PEFT DeepSpeed / FSDP guides (Llama-2-70B, BART-large)", peft_sharded),
    "M-peft_docs_fsdp": Group("PEFT", "PEFT DeepSpeed / FSDP guides (Llama-2-70B, BART-large)", peft_sharded),
    "M-philschmid_fsdpqlora_llama_3": Group("PEFT", "philschmid FSDP + QLoRA Llama-3-70B", philschmid_fsdp_qlora),
    "M-torchao_lowbit_optimizers_re": Group("torchao-opt", "torchao low-bit optimizers", not_evaluable(
        "batch size and sequence length not stated in the README (pytorch/ao PR #812)")),
    "M-unsloth_readme_benchmark_tab": Group("unsloth", "Unsloth README", not_evaluable(
        "model, sequence length or batch not stated in the README (settings live in linked notebooks)")),
    "M-torchtune_e2e_tutorial": Group("TT-tut", "torchtune e2e tutorial", not_evaluable(
        "memory after model init only; training peak given as '~16GB'")),
    "M-torchtune_llama3_tutorial": Group("TT-tut", "torchtune Llama 3 tutorial", not_evaluable(
        "GPU, batch and sequence length not stated")),
}


# ---------------------------------------------------------------------------------------------------
# Rows kept in the scoring but flagged: the published value contradicts another row of the same source
# (or the same source family), or the source leaves out an input the memory depends on. The reason is
# printed with the row; nothing is fitted to them.
# ---------------------------------------------------------------------------------------------------
_TT_QLORA_INIT = ("torchtune's QLoRA tutorial reports 9.13 GB reserved after model init alone "
                  "(M-torchtune_qlora_tutorial-003): torchao 0.1's to_nf4 workspace is modelled (init_quantize_"
                  "workspace), the rest of that reserve (allocator fragmentation while quantizing) is not")
_TT_LORA_SAME_CONFIG = ("same recipe and config (llama2/7B_lora_single_device, batch 2) as the LoRA/QLoRA "
                        "tutorials' 15.57 GB peak reserved (M-torchtune_lora_tutorial-001, "
                        "M-torchtune_qlora_tutorial-002): the torchtune sources differ by 10%; the 2024-03 README "
                        "values were 'ESTIMATED on A100 with memory artificially limited'")
_TT_FULL_4GPU = ("same config (llama2/7B_full, 4 x RTX 4090, batch 2) is 12.01 GB reserved in the 2024-03-25 "
                 "README (M-torchtune_readme-017) and 22.9 GB in the 2024-04-19 README (M-torchtune_readme-012): "
                 "1.9x apart")
_TT_2024_05_LENGTH = ("'Seq Length' of the 2024-05 README is the max_seq_len of alpaca samples padded per batch to "
                      "their longest, so the run's peak length is not published: this table's 70B LoRA row "
                      "(26.4 GB/GPU) leaves room for < ~1k tokens per sequence at batch 4 while its 7B LoRA row "
                      "(21.3 GB) needs more than the full 2048")
_BNB_T4 = ("the blog names quantization, compute dtype, checkpointing, batch, accumulation and seq_len only; the "
           "SFT script's TrainingArguments (fp16/bf16 autocast), LoRA config and padding are not published "
           "(BNB-01..06 of the first set are q-003, q-005, q-007, q-002, q-013 and q-014 transcribed again). What the "
           "stack of the time keeps alive is modelled from its code (peft 0.4.0 prepare_model_for_kbit_training: "
           "every fp16/bf16 parameter to fp32 and checkpointing on, applied by trl 0.4.7's SFTTrainer to any 4/8-bit "
           "model given a peft_config; transformers 4.30.2 Llama: fp32 softmax in eager attention, full-vocabulary "
           "logits with an fp32 loss; bitsandbytes 4-bit: the dequantized weight of one Linear in backward); the "
           "OOM runs sit GiBs above that (see 'GiB short'), more than any per-token term at 1024 "
           "tokens (fp32 logits of 1024 x 32000 are 0.12 GiB), so what else the script held is not published")
_BNB_13B_NQ = ("; 13B NF4 + GC at 1024 tokens is OOM without and fits with nested quantization (0.55 GiB smaller), "
               "so its true peak is within 0.55 GiB of the card")
_T5_LENGTHS = ("sequence lengths are the script defaults, not stated in the post (128/128 assumed); wmt en-ro "
               "batches are padded to their longest sentence: see 'fits up to' for the length the estimate needs")
ROW_FLAGS: dict[str, str] = {
    "M-torchtune_readme-008": _TT_QLORA_INIT,
    "M-torchtune_readme-010": _TT_LORA_SAME_CONFIG, "M-torchtune_readme-015": _TT_LORA_SAME_CONFIG,
    "M-torchtune_readme-012": _TT_FULL_4GPU, "M-torchtune_readme-017": _TT_FULL_4GPU,
    "M-torchtune_readme-009": ("same config (llama2/7B_lora, 2 x RTX 4090, batch 2) is 14.17 GB reserved in the "
                               "2024-03-25 README (M-torchtune_readme-014) and 20.95 GB in the 2024-04-19 README: "
                               "1.5x apart"),
    **{f"M-torchtune_readme-00{i}": _TT_2024_05_LENGTH for i in range(1, 8)},
    "M-peft_docs_fsdp-001": ("a '72-80 GB' range that 'rises at end due to FULL_STATE_DICT save': the top is the "
                             "checkpoint save, not the training step; the midpoint is compared"),
    "M-peft_docs_deepspeed-003": ("the docs page shows the log only: GPU, source and label lengths of the "
                                  "twitter_complaints example are not on it (max_length 128 assumed for both)"),
    **{f"M-hf_blog_4bit_bitsandbytes__q-0{i:02d}": _BNB_T4 + (_BNB_13B_NQ if i in (13, 14) else "")
       for i in range(1, 15)},
    **{f"BNB-0{i}": _BNB_T4 + (_BNB_13B_NQ if j in (13, 14) else "")
       for i, j in ((1, 3), (2, 5), (3, 7), (4, 2), (5, 13), (6, 14))},
    **{f"M-hf_blog_fit_more_and_train_f-{i:03d}": _T5_LENGTHS for i in range(1, 11)},
    **{f"M-philschmid_flant5_xlxxl_deep-00{i}": (
        "OOM with CPU offload of parameters and optimizer at any batch while the GPU-side need at batch 1 is "
        "~5 GiB: host RAM (fitplan estimates 249 GiB per node for 11.3B fp32 parameters with ZeRO-3 offload) "
        "is the likely limit, and the instances' RAM is not published") for i in (7, 8)},
}


def flag_of(row_id: str) -> str:
    """Why a scored row is flagged ('' when it is not)."""
    return ROW_FLAGS.get(row_id, "")


def print_flags(outcomes: dict[str, str]) -> None:
    """The flagged rows (they stay in the scoring) grouped by cause: each reason once, then its rows with
    their outcome in this run (``outcomes``: row id -> e.g. 'err -12%, safe miss' or 'wrong side')."""
    by_reason: dict[str, list[str]] = {}
    for row_id, outcome in outcomes.items():
        if flag_of(row_id):
            by_reason.setdefault(flag_of(row_id), []).append(f"{row_id} ({outcome})")
    if by_reason:
        count = sum(len(rows) for rows in by_reason.values())
        print(f"flagged rows by cause (kept in the scoring; the published value contradicts another row or lacks "
              f"an input): {count}")
        for reason, rows in by_reason.items():
            print(textwrap.fill(reason, 110, initial_indent="  - ", subsequent_indent="    "))
            print(textwrap.fill(", ".join(rows), 110, initial_indent="      ", subsequent_indent="      "))


def _requests(frame: pd.DataFrame, groups: dict, skipped: list[str]):
    """(row, group, request) of every row whose source group has settings; the others go to ``skipped``."""
    for _, row in frame.iterrows():
        prefix = row["id"].rsplit("-", 1)[0]
        if prefix not in groups:
            skipped.append(f"{row['id']}: no settings for this source")
            continue
        request = groups[prefix].request(row)
        if request.skip:
            skipped.append(f"{row['id']}: {request.skip}")
            continue
        yield row, groups[prefix], request


def _estimate(request: Request, resolve):
    spec = resolve(request.model)
    if request.mode == "inference":
        parallel = {"parallel": "pipeline"} if request.gpus > 1 else {}
        return estimate_memory(spec, request.precision, batch=request.batch, prompt_len=request.seq_len, new_tokens=0,
                               gpus=request.gpus, **parallel, **request.options)
    return estimate_memory(spec, request.precision, mode=request.mode, batch=request.batch, seq_len=request.seq_len,
                           gpus=request.gpus, **request.options)


# Rows whose 'peak' names no counter but whose source reports torch.cuda.max_memory_reserved: torchtune
# 0.1.1 utils/memory.py memory_stats_log logs peak active, allocated and reserved (/ 1e9, resetting the peaks
# after model init), and the same config's value is the reserved one in a sibling table: the 2024-04-19
# README's LoRA single-device 17.18 GB is the 2024-03-25 README's max_memory_reserved (M-torchtune_readme-015),
# the LoRA tutorial's 15.57 GB the QLoRA tutorial's 'peak memory reserved' (M-torchtune_qlora_tutorial-002).
RESERVED_COUNTER = {f"M-torchtune_readme-0{i:02d}" for i in range(8, 13)} | {
    f"M-torchtune_lora_tutorial-00{i}" for i in range(1, 5)}


def measured_gib(row: pd.Series) -> tuple[float, str]:
    unit, total = VALUE_KINDS[str(row["kind"])]
    if row["id"] in RESERVED_COUNTER:
        total = "reserved"
    value = str(row["value"])
    if "-" in value:  # a published range: its midpoint
        low, high = (float(v) for v in value.split("-"))
        number = (low + high) / 2
    else:
        number = float(value)
    return number * unit / GIB, total


def _point(estimate, total: str) -> float:
    if total == "device":
        return estimate.device_total_gib
    if total == "reserved":  # the caching allocator's counter: not the CUDA context, NCCL or CUDA-managed memory
        outside = sum(t.gib for t in estimate.terms if t.counted_in == "device")
        return estimate.device_total_gib - outside
    return estimate.peak_allocated_gib


def value_rows(frame: pd.DataFrame, resolve) -> tuple[pd.DataFrame, list[str]]:
    """Fine-tuning value rows: measured vs point estimate and safe bound."""
    rows, skipped = [], []
    chosen = frame[frame["mode"].astype(str).str.startswith("finetune") & frame["kind"].isin(list(VALUE_KINDS))]
    for row, group, request in _requests(chosen, GROUPS, skipped):
        measured, total = measured_gib(row)
        try:
            estimate = _estimate(request, resolve)
        except FitplanError as error:
            rows.append({"id": row["id"], "group": group.label, "mode": request.mode, "measured_gib": measured,
                         "estimate_gib": float("nan"), "safe_gib": float("nan"), "total": total,
                         "note": f"error: {str(error)[:60]}"})
            continue
        rule16, factory = training_baselines(resolve(request.model), request.mode, request.precision,
                                             request.options)
        per_gpu = request.gpus if request.options.get("sharding") in ("zero3", "fsdp") else 1
        rows.append({"id": row["id"], "group": group.label, "mode": request.mode, "measured_gib": measured,
                     "estimate_gib": _point(estimate, total), "safe_gib": estimate.safe_gib, "total": total,
                     "rule16_gib": rule16 / per_gpu, "factory_gib": factory / per_gpu, "note": estimate.peak_phase,
                     "flagged": bool(flag_of(row["id"]))})
    return pd.DataFrame(rows), skipped


def summarize_values(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.assign(err=100 * (frame.estimate_gib - frame.measured_gib) / frame.measured_gib,
                         safe_ok=frame.safe_gib >= frame.measured_gib)
    out = []
    for group, part in [*frame.groupby("group", sort=False), ("ALL new fine-tuning", frame)]:
        done = part[part.estimate_gib.notna()]  # rows the estimator could not run are counted in 'errors'
        row = {"group": group, "rows": len(done), "errors": len(part) - len(done),
               "median_abs_err_%": done.err.abs().median(), "p90_abs_err_%": done.err.abs().quantile(0.9),
               "safe_hit_%": 100.0 * done.safe_ok.mean()}
        if "rule16_gib" in done:  # the baselines of training_rows (16 B/param rule, LLaMA-Factory table)
            for name, column in (("16B/param", "rule16_gib"), ("LLaMA-Factory", "factory_gib")):
                row[f"{name}_median_%"] = (100 * (done[column] - done.measured_gib) / done.measured_gib).abs().median()
        out.append(row)
    return pd.DataFrame(out), frame


# ---------------------------------------------------------------------------------------------------
# Fit/OOM rows
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BoundGroup:
    label: str
    why: str
    request: Callable[[pd.Series], Request]


def bnb_blog(row: pd.Series) -> Request:
    """HF blog '4-bit ... QLoRA' T4 matrix: TRL SFTTrainer, peft 0.4, bitsandbytes 0.39, batch 1, GA 4,
    LoRA on q/v (peft's Llama default), eager attention (transformers 4.30)."""
    text, mode = _text(row), _tt_mode(row)
    precision = "int8" if "int8" in text else ("fp4" if "fp4" in text else "nf4")
    if "+ nq" in text:
        precision += "-dq"
    options = {"framework": "hf-2023", "attention": "eager", "grad_accum": 4,
               "grad_checkpointing": "none" if "no gc" in text else "full",
               "train_precision": "fp16-mixed" if "fp16 cd" in text else "bf16-mixed"}
    gpus = _int(row["gpus"], 1)
    if gpus > 1:  # device_map='auto' over two T4s: not data parallel; the estimate is of one card holding half
        return Request(skip="model split over two GPUs with device_map='auto' (pipeline, not data parallel)")
    return Request(str(row["model"]), precision, mode, 1, _int(row["seq_len"], 512), 1, options)


T5_BLOG_SEQ = (128, 128)


def hf_fit_more(row: pd.Series) -> Request:
    """HF blog 'Fit More and Train Faster With ZeRO via DeepSpeed and FairScale' (transformers 4.2,
    finetune_trainer.py on wmt en-ro: --max_source_length 128 --max_target_length 128; T5 in fp32 or fp16
    AMP; AdamW). FairScale sharded_ddp is scored as DeepSpeed ZeRO-2 (which adds an fp32 optimizer partition
    that fairscale's OSS does not keep for an fp32 model)."""
    text, gpus = _text(row), _int(row["gpus"], 1)
    options: dict[str, Any] = {"framework": "hf-2021", "attention": "eager", "optimizer": "adamw-loop",
                               "train_precision": "fp16-mixed" if "fp16" in text else "fp32",
                               "target_len": T5_BLOG_SEQ[1], "grad_checkpointing": "none"}
    if "sharded_ddp" in text or "fairscale" in text:
        options["sharding"] = "zero2"
    elif "deepspeed" in text or "zero" in text:
        options["sharding"] = "zero2"
        options["train_precision"] = "fp16-mixed"
        if "w/ cpu offload" in text or "zero-offload" in text or "cpu offload" in text and "w/o" not in text:
            options["offload"] = "optimizer"
    elif gpus > 1:
        options["sharding"] = "ddp"
    if options.get("sharding", "none") in ("zero2",) and gpus == 1 and "offload" not in options:
        options["sharding"] = "none"
    precision = "fp32"
    return Request(str(row["model"]), precision, "full", _int(row["batch"], 1), T5_BLOG_SEQ[0], gpus, options)


def flan_t5_deepspeed(row: pd.Series) -> Request:
    """philschmid 'Fine-tune FLAN-T5 XL/XXL using DeepSpeed & Hugging Face Transformers': Seq2SeqTrainer +
    DeepSpeed ZeRO-3 (ds_flan_t5_z3_config[_bf16].json, optional offload of optimizer and parameters),
    cnn_dailymail truncated to 512 source tokens, 129 target tokens (generation_max_length 129), AdamW;
    scripts/run_seq2seq_deepspeed.py defaults to --gradient_checkpointing True and --bf16 on A100s."""
    text, gpus = _text(row), _int(row["gpus"], 1)
    if str(row["kind"]) == "fits_bool" and pd.isna(row["batch"]):
        batch = 1  # OOM at any per-GPU batch: the smallest one is the tightest claim
    else:
        batch = _int(row["batch"], 1)
    bf16 = "bf16" in str(row["precision"]).lower()
    options: dict[str, Any] = {"framework": "hf", "attention": "eager", "sharding": "zero3",
                               "train_precision": "bf16" if bf16 else "fp32", "target_len": 129,
                               "grad_checkpointing": "full"}
    if "cpu offload" in text:
        options["offload"] = "params"
    return Request(str(row["model"]), "bf16" if bf16 else "fp32", "full", batch, 512, gpus, options)


def llamacpp_bench(row: pd.Series) -> Request:
    """XiongjieDai GPU-Benchmarks-on-LLM-Inference: llama-bench with every layer on the GPU(s)."""
    gpu = str(row["gpu"])
    if gpu.startswith("M") and "Core" in gpu:
        return Request(skip="Apple GPU working-set limit (a share of unified memory) is not modelled here")
    precision = "q4_k_m" if "Q4_K_M" in str(row["precision"]) else "gguf-f16"
    tokens = _int(row["prompt_len"], 0) + _int(row["gen_len"], 0)
    return Request(str(row["model"]), precision, "inference", 1, tokens, _int(row["gpus"], 1),
                   {"engine": "llamacpp"})


def weights_too_big(row: pd.Series) -> Request:
    return Request(str(row["model"]), "bf16", "inference", _int(row["batch"], 1), 128, _int(row["gpus"], 1),
                   {"engine": "hf"})


def bloom_int8(row: pd.Series) -> Request:
    return Request(skip="BLOOM-176B is not in the model registry")


BOUND_GROUPS: dict[str, BoundGroup] = {
    "M-hf_blog_4bit_bitsandbytes__q": BoundGroup("BNB-T4", "HF 4-bit/QLoRA blog T4 matrix", bnb_blog),
    "M-hf_blog_fit_more_and_train_f": BoundGroup("T5-ZeRO", "HF blog ZeRO/FairScale T5 runs", hf_fit_more),
    "M-philschmid_flant5_xlxxl_deep": BoundGroup("FLAN-T5", "FLAN-T5 XL/XXL DeepSpeed ZeRO-3", flan_t5_deepspeed),
    "M-xiongjiedai_gpubenchmarksonl": BoundGroup("llama.cpp", "llama.cpp OOM table", llamacpp_bench),
    "M-gptfast_readme": BoundGroup("weights>GPU", "gpt-fast / LLM.int8 OOM claims", weights_too_big),
    "M-gptfast_mixtralmoe_readme": BoundGroup("weights>GPU", "gpt-fast / LLM.int8 OOM claims", weights_too_big),
    "M-hf_blog_llmint8": BoundGroup("weights>GPU", "gpt-fast / LLM.int8 OOM claims", bloom_int8),
}


def bound_rows(frame: pd.DataFrame, resolve, first_set: pd.DataFrame | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Every fit/OOM row: does the point estimate land on the published side of the capacity?"""
    rows, skipped = [], []
    for row, group, request in _requests(frame[frame["kind"].isin(BOUND_KINDS)], BOUND_GROUPS, skipped):
        kind = str(row["kind"])
        capacity = capacity_gib(str(row["gpu"]))
        fits = kind in ("fits_at_batch", "max_batch_fit") or (kind == "fits_bool" and str(row["value"]) == "1")
        threshold = float(row["value"]) if kind == "alloc_at_OOM_GiB" else capacity
        outcome = "> lower bound" if kind == "alloc_at_OOM_GiB" else ("fits" if fits else "OOM")
        try:
            estimate = _estimate(request, resolve)
        except FitplanError as error:
            rows.append({"id": row["id"], "group": group.label, "outcome": outcome, "limit_gib": threshold,
                         "point_gib": float("nan"), "safe_gib": float("nan"), "point_agrees": False,
                         "safe_agrees": False, "note": f"error: {str(error)[:70]}"})
            continue
        point = estimate.peak_allocated_gib if kind == "alloc_at_OOM_GiB" else estimate.device_total_gib
        safe = estimate.safe_gib
        if kind == "alloc_at_OOM_GiB":
            agrees, safe_agrees = point >= threshold, safe >= threshold
        else:
            agrees, safe_agrees = (point <= threshold) == fits, (safe <= threshold) == fits
        note = ""
        if fits and not agrees and request.mode != "inference" and request.seq_len > 8:
            note = f"fits up to {_longest_fitting(request, resolve, threshold)} tokens"
        elif not fits and not agrees:
            note = f"{threshold - point:.2f} GiB short of the OOM"
        rows.append({"id": row["id"], "group": group.label, "outcome": outcome, "limit_gib": round(threshold, 2),
                     "point_gib": round(point, 2), "safe_gib": round(safe, 2), "point_agrees": agrees,
                     "safe_agrees": safe_agrees, "note": note, "flagged": bool(flag_of(row["id"]))})
    if first_set is not None and len(first_set):
        for _, row in first_set.iterrows():
            rows.append({"id": row["id"], "group": "BNB (set 1)", "outcome": row["outcome"],
                         "limit_gib": row["bound_gib"], "point_gib": row["device_total_gib"],
                         "safe_gib": row["safe_gib"], "point_agrees": row["point_agrees"],
                         "safe_agrees": row["safe_agrees"], "note": "", "flagged": bool(flag_of(row["id"]))})
    return pd.DataFrame(rows), skipped


def _longest_fitting(request: Request, resolve, capacity: float) -> int:
    """The longest sequence (target length scaled alike) whose point estimate fits ``capacity``: how short
    the source's longest batch must have been for a published 'fits' (its lengths are not published)."""
    def fits(seq: int) -> bool:
        options = dict(request.options)
        if options.get("target_len"):
            options["target_len"] = max(1, options["target_len"] * seq // request.seq_len)
        return _estimate(Request(request.model, request.precision, request.mode, request.batch, seq, request.gpus,
                                 options), resolve).device_total_gib <= capacity
    low, high = 0, request.seq_len
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def summarize_bounds(frame: pd.DataFrame) -> pd.DataFrame:
    out = []
    unflagged = frame[~frame.flagged] if "flagged" in frame else frame
    for group, part in [*frame.groupby("group", sort=False), ("ALL fit/OOM", once(frame)),
                        ("  (as transcribed: merged rows counted twice)", frame),
                        ("  (diagnostic) without flagged rows", once(unflagged))]:
        out.append({"group": group, "rows": len(part), "point_right_%": 100.0 * part.point_agrees.mean(),
                    "safe_right_%": 100.0 * part.safe_agrees.mean(),
                    "errors": int(part.point_gib.isna().sum())})
    return pd.DataFrame(out)


def print_more(resolve, first_bounds: pd.DataFrame | None, show_rows: bool, csv: Path = MORE_CSV,
               first_values: pd.DataFrame | None = None) -> tuple[pd.DataFrame | None, pd.DataFrame]:
    """Print the second set's value and fit/OOM tables (with the first set's rows in the totals); returns
    (value summary, fit/OOM summary)."""
    frame = pd.read_csv(csv)
    values, skipped_values = value_rows(frame, resolve)
    print("\nSECOND SET: fine-tuning value rows (benchmarks/data/published_memory_measurements_more.csv)")
    if len(values):
        summary, detail = summarize_values(values)
        if show_rows:
            print(detail.round(3).to_string(index=False))
            print()
        if first_values is not None and len(first_values):
            joined = pd.concat([first_values, values], ignore_index=True)
            joined["flagged"] = [bool(flag_of(i)) for i in joined["id"]]
            both = summarize_values(once(joined))[0].iloc[[-1]]
            twice = summarize_values(joined)[0].iloc[[-1]]
            clean = summarize_values(once(joined[~joined.flagged]))[0].iloc[[-1]]
            summary = pd.concat([summary, both.assign(group="ALL fine-tuning, both sets"),
                                 twice.assign(group="  (as transcribed: merged rows counted twice)"),
                                 clean.assign(group="  (diagnostic) without flagged rows")], ignore_index=True)
        print(summary.round(2).to_string(index=False))
    print(f"skipped {len(skipped_values)} value rows:")
    for line in skipped_values:
        print(f"  {line}")
    if len(values):
        done = values.assign(err=100 * (values.estimate_gib - values.measured_gib) / values.measured_gib)
        if first_values is not None and len(first_values):
            done = pd.concat([first_values.assign(err=100 * (first_values.estimate_gib - first_values.measured_gib)
                                                  / first_values.measured_gib), done], ignore_index=True)
        print_flags({r.id: f"err {r.err:+.0f}%, safe {'ok' if r.safe_gib >= r.measured_gib else 'miss'}"
                     for r in done.itertuples()})
    bounds, skipped_bounds = bound_rows(frame, resolve, first_bounds)
    print("\nFIT/OOM ROWS (point estimate of the device total on the published side of the capacity)")
    if show_rows:
        print(bounds.to_string(index=False))
        print()
    bound_summary = summarize_bounds(bounds)
    print(bound_summary.round(1).to_string(index=False))
    print(f"skipped {len(skipped_bounds)} fit/OOM rows:")
    for line in skipped_bounds:
        print(f"  {line}")
    print_flags({r.id: "right side" if r.point_agrees else "wrong side" for r in bounds.itertuples()})
    print("settings per source group:")
    seen = set()
    for group in [*GROUPS.values(), *BOUND_GROUPS.values()]:
        doc = (group.request.__doc__ or "").strip().splitlines()
        if doc and group.request not in seen:
            seen.add(group.request)
            print(f"  {group.label}: {' '.join(line.strip() for line in doc)}")
    return (summary if len(values) else None), bound_summary
