"""Measured effect of each compression step on MiniLM and the tiny LM fixture, next to the planner.

For every strategy the step runs in this process (``executors.steps.apply_strategy``) on a fresh copy
of the model and the table shows: parameters (real, and ``derive_spec`` / ``low_rank_params`` for the
same strategy), state-dict bytes, the share of exact zeros, the quality (MiniLM: embedding fidelity to
the original on the 60 shipped sentences; tiny LM: validation perplexity of the default corpus) and
the wall time of the steps. Timings on a shared 2-core VM vary; quote ratios.

    python benchmarks/compression_steps.py [--model minilm|tiny-lm|both] [--distill-steps 60]
                                           [--fixture-steps N]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.models.derive import derive_spec, low_rank_params  # noqa: E402
from planner.strategy import (  # noqa: E402
    CompressionStrategy,
    DistillationSpec,
    LowRankSpec,
    QuantizationSpec,
    SparsitySpec,
)


def strategies(kind: str, distill_steps: int) -> dict[str, CompressionStrategy]:
    distill = DistillationSpec(depth_ratio=0.5, steps=distill_steps, batch_size=8, seq_len=128,
                               learning_rate=1e-4 if kind == "encoder" else 3e-4)
    table = {
        "baseline": CompressionStrategy(),
        "bf16": CompressionStrategy(quantization=QuantizationSpec(weights="bf16")),
        "int8 (bnb)": CompressionStrategy(quantization=QuantizationSpec(weights="int8", compute_dtype="fp32")),
        "nf4 + bf16 rest": CompressionStrategy(quantization=QuantizationSpec(weights="nf4")),
        "dynamic-int8": CompressionStrategy(quantization=QuantizationSpec(weights="dynamic-int8",
                                                                          compute_dtype="fp32")),
        "50% magnitude": CompressionStrategy(sparsity=SparsitySpec(level=0.5)),
        "50% wanda": CompressionStrategy(sparsity=SparsitySpec(level=0.5, method="wanda")),
        "2:4 wanda": CompressionStrategy(sparsity=SparsitySpec(level=0.5, pattern="2:4", method="wanda")),
        "ffn 0.5": CompressionStrategy(sparsity=SparsitySpec(level=0.5, pattern="ffn")),
        "layers 0.5": CompressionStrategy(sparsity=SparsitySpec(level=0.5, pattern="layers")),
        "low-rank 0.5": CompressionStrategy(low_rank=LowRankSpec(rank_ratio=0.5)),
        f"depth 0.5, {distill_steps} steps": CompressionStrategy(distillation=distill),
        "depth 0.5 + 2:4 wanda + nf4": CompressionStrategy(
            distillation=distill, sparsity=SparsitySpec(level=0.5, pattern="2:4", method="wanda"),
            quantization=QuantizationSpec(weights="nf4")),
    }
    if kind == "causal-lm":
        table["heads 0.5"] = CompressionStrategy(sparsity=SparsitySpec(level=0.5, pattern="heads"))
    return table


def load(name: str, fixture_steps: int):
    import transformers

    from executors.corpus import RandomWindows, default_corpus, token_ids
    from executors.evaluate import FidelityEvaluator, PerplexityEvaluator
    from executors.fixtures import ensure_tiny_llm, minilm_dir

    if name == "minilm":
        path, kind, auto, evaluator = minilm_dir(), "encoder", transformers.AutoModel, FidelityEvaluator()
    else:
        path, kind = Path(ensure_tiny_llm(fixture_steps, progress=True).path), "causal-lm"
        auto, evaluator = transformers.AutoModelForCausalLM, PerplexityEvaluator()
    model = auto.from_pretrained(path).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    train = token_ids(tokenizer, default_corpus().train)
    return model, tokenizer, kind, evaluator, RandomWindows(train, seed=0)


def run(name: str, distill_steps: int, fixture_steps: int) -> None:
    from executors.steps import StepContext, apply_strategy
    from executors.steps.layout import model_spec
    from executors.steps.storage import count_params, count_zeros, state_dict_bytes

    model, tokenizer, kind, evaluator, batches = load(name, fixture_steps)
    reference = evaluator.reference(model, tokenizer)
    spec = model_spec(model)
    print(f"\n{name}: {spec.summary()}; quality = {evaluator.metric}")
    print(f"{'strategy':34} {'params':>11} {'planner':>11} {'state MB':>9} {'zeros':>6} {'quality':>9} {'seconds':>8}")
    for label, strategy in strategies(kind, distill_steps).items():
        context = StepContext(batches=batches, calibration_batches=8, calibration_batch_size=4,
                              calibration_seq_len=128, seed=0)
        start = time.perf_counter()
        compressed, reports = apply_strategy(copy.deepcopy(model), strategy, context)
        seconds = time.perf_counter() - start
        kept = next((r.structure["kept_layers"] for r in reports if "kept_layers" in r.structure), None)
        predicted = derive_spec(spec, strategy, kept_layers=kept)
        planned = low_rank_params(predicted, strategy.low_rank) if strategy.low_rank else predicted.params.total
        params = reports[-1].params_after if reports else count_params(compressed)  # logical count
        zeros = count_zeros(compressed) / max(1, sum(p.numel() for p in compressed.parameters()
                                                      if p.is_floating_point()))
        quality = evaluator.evaluate(compressed, tokenizer, reference).value
        print(f"{label:34} {params:>11,} {planned:>11,} {state_dict_bytes(compressed) / 2**20:>9.2f} "
              f"{zeros:>6.1%} {quality:>9.4f} {seconds:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["minilm", "tiny-lm", "both"], default="both")
    parser.add_argument("--distill-steps", type=int, default=60)
    parser.add_argument("--fixture-steps", type=int, default=None, help="training steps of the tiny LM fixture "
                        "(default: the fixture's default)")
    args = parser.parse_args()
    from executors.fixtures import DEFAULT_STEPS

    for name in (["minilm", "tiny-lm"] if args.model == "both" else [args.model]):
        run(name, args.distill_steps, args.fixture_steps or DEFAULT_STEPS)


if __name__ == "__main__":
    main()
