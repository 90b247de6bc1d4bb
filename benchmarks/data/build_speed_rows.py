"""Build ``published_speed_rows.csv`` from the published speed measurements (run once, output committed).

Usage: ``python benchmarks/data/build_speed_rows.py PUBLISHED_CSV``. Each published row (columns kept
as they are, with their source and locator) gets the fitplan names it is predicted with: ``fp_model``
(registry), ``fp_precision`` (weight format), ``fp_engine`` (speed engine), ``fp_gpu`` (catalog),
``fp_gpus``/``fp_parallel``, ``fp_batch``, ``fp_prompt``/``fp_new`` (tokens), ``fp_measure`` (what is
compared: decode_tok_s, prefill_tok_s, per_token_ms, ttft_ms, throughput_per_gpu) and ``fp_value`` (the
published value in that unit). Rows fitplan cannot name (models outside the registry, formats without
a storage rule, a batch the source does not state) are left out; the script prints why, per reason.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

import pandas as pd

OUT = Path(__file__).with_name("published_speed_rows.csv")

MODELS = [  # (regex on the published model name, registry name)
    (r"llama-3\.3-70b", "meta-llama/Llama-3.3-70B-Instruct"),
    (r"llama-3\.1-405b|llama 3\.1 405b", "meta-llama/Llama-3.1-405B"),
    (r"llama-3\.1-70b|llama 3\.1 70b", "meta-llama/Llama-3.1-70B"),
    (r"llama-3\.1-8b|llama 3\.1 8b|llama-3-8\.1b", "meta-llama/Llama-3.1-8B"),
    (r"llama-3-70b", "meta-llama/Meta-Llama-3-70B"),
    (r"llama-3-8b|llama 8b", "meta-llama/Meta-Llama-3-8B"),
    (r"llama-?2-?70b|llama2 70b|llama 70b|llama_70b", "meta-llama/Llama-2-70b-hf"),
    (r"llama-?2-?13b|llama 13b|llama_13b", "meta-llama/Llama-2-13b-hf"),
    (r"llama-?2-?7b|llama2 7b|llama 7b", "meta-llama/Llama-2-7b-hf"),
    (r"codellama[- ]34b", "codellama/CodeLlama-34b-hf"),
    (r"mixtral", "mistralai/Mixtral-8x7B-v0.1"),
    (r"mistral 7b", "mistralai/Mistral-7B-v0.1"),
    (r"tinyllama", "TinyLlama/TinyLlama-1.1B-Chat-v1.0"),
]

PRECISIONS = [  # (regex on the published precision, fitplan format, KV dtype or "")
    (r"gguf f16|^fp16 \(q0f16", "gguf-f16", ""),
    (r"gguf q8_0", "gguf-q8_0", ""), (r"gguf q6_k", "gguf-q6_k", ""), (r"gguf q5_k - medium|gguf q5_k_m", "gguf-q5_k_m", ""),
    (r"gguf q4_k_m|gguf q4_k - medium", "gguf-q4_k_m", ""), (r"gguf q4_0", "gguf-q4_0", ""),
    (r"gguf q2_k", "gguf-q2_k", ""),
    (r"fp8 \(weights\+kv\)", "fp8", "fp8"), (r"^fp8", "fp8", ""),
    (r"fp4 \(nvidia", "nvfp4", ""),
    (r"^int8 weight-only|^int8wo", "int8", ""), (r"llm\.int8", "int8", ""),
    (r"int4 weight-only|^int4wo-64|mlc q4f16_1|gptq 4-bit|exl2 4\.0 bpw", "gptq-int4", ""),
    (r"awq 4-bit", "awq-int4", ""),
    (r"^fp16$|^float16|^fp16 ", "fp16", ""),
    (r"^base \(b|^bf16$|^bf16 \(baseline\)|^bf16 weights; bf16 kv|^bf16 \(none\)|^bf16 full", "bf16", ""),
    (r"^float32|^fp32", "fp32", ""),
]

ENGINES = [  # (regex on the published engine, fitplan speed engine, how several GPUs split the model)
    (r"speculative|rocm|xpu|lora|torchtune|tgi|text generation inference", None, ""),
    (r"gpt-fast|torchao \+ torch\.compile", "torch-compile", "tensor"),
    (r"torchao generate\.py \(eager", "hf", "pipeline"),
    (r"^hf |transformers", "hf", "pipeline"),
    (r"llama\.cpp", "llamacpp", "pipeline"),
    (r"mlc", "mlc", "tensor"),
    (r"exllama", "exllamav2", "pipeline"),
    (r"vllm", "vllm", "tensor"),
    (r"tensorrt", "tensorrt-llm", "tensor"),
]

GPUS = [  # (regex on the published GPU, catalog name)
    (r"^l40s", "L40S"), (r"h200", "H200 SXM"), (r"h100 pcie", "H100 PCIe"), (r"^h100", "H100 SXM"),
    (r"a100 pcie", "A100 80GB PCIe"), (r"a100 40gb", "A100 40GB SXM"), (r"^a100", "A100 80GB SXM"),
    (r"^a10g", "A10G"), (r"4090", "RTX 4090"), (r"3090 ti", "RTX 3090 Ti"), (r"3090", "RTX 3090"),
    (r"4080", "RTX 4080"), (r"4070 ti", "RTX 4070 Ti"), (r"3080 ti", "RTX 3080 Ti"), (r"3080", "RTX 3080 10GB"),
    (r"3070", "RTX 3070"), (r"rtx a6000|^a6000", "RTX A6000"), (r"6000 ada", "RTX 6000 Ada"),
    (r"5000 ada", "RTX 5000 Ada"), (r"4000 ada", "RTX 4000 Ada"), (r"^a40", "A40"), (r"^t4", "T4"),
    (r"p40", "Tesla P40"), (r"titan rtx", "Titan RTX"), (r"^gb200", "GB200"), (r"^b200", "B200"),
    (r"m2 ultra", "M2 Ultra 192GB"), (r"m1 max", "M1 Max 64GB"), (r"m3 max", "M3 Max 128GB"),
    (r"7900 xtx", "RX 7900 XTX"),
]

MEASURES = {"decode_tok_s": "decode_tok_s", "prefill_tok_s": "prefill_tok_s", "ttft_ms": "ttft_ms",
            "ms_per_token": "per_token_ms", "s_per_token": "per_token_ms",
            "throughput_out_tok_s_per_gpu": "throughput_per_gpu"}


def _match(table, text):
    text = str(text).lower().replace("‑", "-")
    for pattern, *value in table:
        if re.search(pattern, text):
            return value
    return None


def _int(value, default=None):
    number = re.search(r"\d+(\.\d+)?", str(value))
    return int(float(number.group(0))) if number and str(value) != "nan" else default


def map_row(row) -> tuple[dict | None, str]:
    if row.kind not in MEASURES:
        return None, f"kind {row.kind} (no fixed batch or not inference)"
    model = _match(MODELS, row.model)
    if model is None:
        return None, "model not in the registry"
    precision = _match(PRECISIONS, row.precision)
    if precision is None:
        return None, "format without a storage rule"
    engine = _match(ENGINES, row.engine)
    if engine is None or engine[0] is None:
        return None, "engine not modelled (speculative, ROCm/XPU, TGI, training)"
    gpu = _match(GPUS, row.gpu)
    if gpu is None:
        return None, "GPU not in the catalog or not stated"
    if precision[0].startswith("gguf") != (engine[0] == "llamacpp"):
        return None, "format and engine do not match"
    if "--cache_size" in str(row.settings):
        return None, "attention over a pre-allocated cache of unstated fill"
    if re.search(r"ubatch\) size (16|32|64|128)", str(row.settings)):
        return None, "llama.cpp physical batch below the default"
    gpus = _int(row.gpus, 1)
    tp = re.search(r"TP=?(\d+)", str(row.settings))
    gpus = int(tp.group(1)) if tp and engine[0] == "tensorrt-llm" else gpus
    batch = _int(row.batch, 1)
    prompt = max(_int(row.prompt_len, 1), 1)
    new = _int(row.gen_len, 0) or (128 if row.kind in ("decode_tok_s", "ms_per_token", "s_per_token") else 0)
    if row.kind == "throughput_out_tok_s_per_gpu" and not new:
        return None, "throughput without an output length"
    value = float(row.value) * (1000.0 if row.kind == "s_per_token" else 1.0)
    if row.kind in ("ms_per_token", "s_per_token") and "normalised by batch" not in str(row.notes).lower() and batch > 1:
        value *= batch  # 'time per token' across the batch (LLM.int8 blog): per-step latency = value x batch
    return {"fp_model": model[0], "fp_precision": precision[0], "fp_kv_dtype": precision[1], "fp_engine": engine[0],
            "fp_gpu": gpu[0], "fp_gpus": gpus, "fp_parallel": engine[1], "fp_batch": batch, "fp_prompt": prompt,
            "fp_new": new, "fp_measure": MEASURES[row.kind], "fp_value": value}, ""


def main(path: str) -> None:
    published = pd.read_csv(path)
    kept, dropped = [], Counter()
    for row in published.itertuples(index=False):
        mapped, reason = map_row(row)
        if mapped is None:
            dropped[reason] += 1
        else:
            kept.append({**row._asdict(), **mapped})
    frame = pd.DataFrame(kept)
    frame.to_csv(OUT, index=False)
    print(f"{len(frame)} of {len(published)} rows kept -> {OUT}")
    for reason, count in dropped.most_common():
        print(f"  left out {count:4d}: {reason}")


if __name__ == "__main__":
    main(sys.argv[1])
