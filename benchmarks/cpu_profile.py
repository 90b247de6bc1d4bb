"""Measure the CPU profile constants of ``planner/data/cpu_profile.toml`` on this machine.

    python benchmarks/cpu_profile.py            # measure and print the TOML
    python benchmarks/cpu_profile.py --write    # ... and write planner/data/cpu_profile.toml

Two random-initialised calibration models are built (a Llama-style causal LM and a BERT encoder,
shapes below; deliberately NOT the models that benchmarks/executor_memory.py checks), and each weight
path (fp32, bf16, int8 and 4-bit with float32 or bfloat16 compute) runs once through
``executors.execute`` in an isolated process. From the measured phases (see planner.memory.cpu):

    S = startup peak of the runs without bitsandbytes;  B = startup peak with it - S
    L = RSS after load - startup RSS - weights converted while loading
        (- their float32 source pages when the checkpoint stays mapped)
    T = (load peak - RSS after load) / float32 bytes of the converted tensors (0 when none or mapped)
    E = evaluate peak - RSS after load - mapped weights a forward reads - activations of the evaluate batch
    P = speed peak - RSS after load - mapped weights a forward reads - activations of the timed batch

(weights split by planner.memory.cpu.weight_residency, activations by activation_bytes). A last run per
model goes through the compression steps (50 % unstructured magnitude pruning, then nf4 by module
replacement, float32 checkpoint C):

    L = RSS after load - startup RSS;  K = (compress peak - RSS after load) / C
    R = (RSS after compress - RSS after load) / C
    E, P = evaluate / speed peak - RSS after compress - activations

The machine part is measured first, in the same session, by executors.machine_profile (S, B, the
load of a tiny model load[kind] and a first forward's overhead forward[kind]); the file keeps it as
``reference_machine`` and stores the portable remainder: L - load[kind] (every path and the steps),
E - forward[kind] and P - forward[kind] (load-time paths). On another machine, planner.memory.cpu adds
that machine's own measured part back. S and B of the runs themselves are printed next to the
probe's as a check.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner import get_model  # noqa: E402
from planner.memory.cpu import CpuWorkload, activation_bytes, weight_residency, weights_path  # noqa: E402
from planner.strategy import CompressionStrategy, QuantizationSpec, SparsitySpec  # noqa: E402

PATHS = {
    "fp32": None,
    "bf16": QuantizationSpec(weights="bf16", compute_dtype="bf16"),
    "int8-fp32": QuantizationSpec(weights="int8", compute_dtype="fp32"),
    "int8-bf16": QuantizationSpec(weights="int8", compute_dtype="bf16"),
    "4bit-fp32": QuantizationSpec(weights="nf4", compute_dtype="fp32"),
    "4bit-bf16": QuantizationSpec(weights="nf4", compute_dtype="bf16"),
}
# Shapes unlike the validated models (MiniLM: BERT 384 x 6 layers; tiny-llama: 256 x 4 layers), at a scale
# where the checkpoint's pages matter (~60 MB and ~110 MB float32).
LLAMA = {"vocab_size": 2048, "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 6,
         "num_key_value_heads": 2, "intermediate_size": 1024, "max_position_embeddings": 256,
         "tie_word_embeddings": False, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
BERT = {"vocab_size": 30522, "hidden_size": 512, "num_hidden_layers": 4, "num_attention_heads": 8,
        "intermediate_size": 2048, "max_position_embeddings": 512}
STEPS = CompressionStrategy(sparsity=SparsitySpec(level=0.5), quantization=QuantizationSpec(weights="nf4"))
MINILM_TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def build_models(root: Path) -> dict[str, Path]:
    import torch
    import transformers

    from executors.corpus import default_corpus
    from executors.fixtures import minilm_dir, train_tokenizer

    torch.manual_seed(0)
    llama_dir, bert_dir = root / "calib-llama", root / "calib-bert"
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA)).save_pretrained(llama_dir)
    train_tokenizer(default_corpus().train).save_pretrained(llama_dir)
    transformers.BertModel(transformers.BertConfig(**BERT)).save_pretrained(bert_dir)
    for name in MINILM_TOKENIZER_FILES:
        shutil.copy(minilm_dir() / name, bert_dir / name)
    return {"causal-lm": llama_dir, "encoder": bert_dir}


def activations(spec, kind: str, batch: int, seq_len: int, compute: str, evaluator: str | None) -> float:
    parts = activation_bytes(spec, kind, batch, seq_len, 4 if compute == "fp32" else 2, evaluator)
    return sum(value for value, _ in parts.values())


def measure_steps(kind: str, model_dir: Path, out_dir: Path) -> dict[str, float]:
    from executors import execute

    spec = get_model(model_dir)
    workload = CpuWorkload.default(kind)
    result = execute(model_dir, STEPS, out_dir=out_dir, device="cpu")
    if not result.ok:
        raise SystemExit(f"{kind} steps failed: {result.reason}")
    phase = {p.name: p for p in result.phases}
    checkpoint = spec.params.total * 4
    load_end, compress_end = phase["load"].rss_end_bytes, phase["compress"].rss_end_bytes
    values = {
        "load_overhead_bytes": load_end - phase["startup"].rss_end_bytes,
        "compress_peak_fraction": round((phase["compress"].peak_rss_bytes - load_end) / checkpoint, 3),
        "compress_retained_fraction": round((compress_end - load_end) / checkpoint, 3),
        "evaluate_overhead_bytes": phase["evaluate"].peak_rss_bytes - compress_end - activations(
            spec, kind, workload.evaluate_batch, workload.evaluate_seq_len, "bf16", workload.evaluator),
        "speed_overhead_bytes": phase["speed"].peak_rss_bytes - compress_end - activations(
            spec, kind, workload.speed_batch, workload.speed_seq_len, "bf16", None),
    }
    print(f"  {kind:9s} steps     " + "  ".join(f"{k}={v:.3g}" for k, v in values.items()), file=sys.stderr, flush=True)
    return values


def portable(paths: dict, steps: dict, machine) -> tuple[dict, dict]:  # noqa: ANN001 - MachineProfile
    """Subtract the machine part (see the module docstring)."""
    out_paths = {}
    for key, values in paths.items():
        kind = key.split(".")[0]
        load, forward = machine.load_bytes[kind], machine.forward_bytes[kind]
        out_paths[key] = values | {"load_overhead_bytes": values["load_overhead_bytes"] - load,
                                   "evaluate_overhead_bytes": values["evaluate_overhead_bytes"] - forward,
                                   "speed_overhead_bytes": values["speed_overhead_bytes"] - forward}
    out_steps = {kind: values | {"load_overhead_bytes": values["load_overhead_bytes"] - machine.load_bytes[kind]}
                 for kind, values in steps.items()}
    return out_paths, out_steps


def measure(models: dict[str, Path], out_dir: Path) -> tuple[dict, list[float], list[float], dict]:
    from executors import execute

    paths: dict[str, dict[str, float]] = {}
    steps = {kind: measure_steps(kind, model_dir, out_dir) for kind, model_dir in models.items()}
    plain_startups, bnb_startups = [], []
    for kind, model_dir in models.items():
        spec = get_model(model_dir)
        workload = CpuWorkload.default(kind)
        for path, quant in PATHS.items():
            result = execute(model_dir, CompressionStrategy(quantization=quant), out_dir=out_dir, device="cpu")
            if not result.ok:
                raise SystemExit(f"{kind} {path} failed: {result.reason}")
            phase = {p.name: p for p in result.phases}
            strategy = CompressionStrategy(quantization=quant)
            profile_path, fmt, compute = weights_path(strategy)
            if profile_path != path:
                raise SystemExit(f"{path}: the estimator files this strategy under {profile_path}")
            held = weight_residency(spec, fmt, compute)
            (bnb_startups if "bit" in path or "int8" in path else plain_startups).append(phase["startup"].peak_rss_bytes)
            load_end = phase["load"].rss_end_bytes
            transient = phase["load"].peak_rss_bytes - load_end
            paths[f"{kind}.{path}"] = {
                "load_overhead_bytes": load_end - phase["startup"].rss_end_bytes - held.converted
                - (held.converted_source if held.mapped else 0.0),
                "load_transient_fraction": round(transient / held.converted_source, 3)
                if held.converted_source and not held.mapped else 0.0,
                "evaluate_overhead_bytes": phase["evaluate"].peak_rss_bytes - load_end - held.mapped_touched
                - activations(spec, kind, workload.evaluate_batch, workload.evaluate_seq_len, compute,
                              workload.evaluator),
                "speed_overhead_bytes": phase["speed"].peak_rss_bytes - load_end - held.mapped_touched
                - activations(spec, kind, workload.speed_batch, workload.speed_seq_len, compute, None),
            }
            print(f"  {kind:9s} {path:9s} " + "  ".join(
                f"{k.removesuffix('_bytes')}={v / 2**20 if k.endswith('bytes') else v:.1f}"
                for k, v in paths[f"{kind}.{path}"].items()), file=sys.stderr, flush=True)
    return paths, plain_startups, bnb_startups, steps


def render(paths: dict, steps: dict, machine) -> str:  # noqa: ANN001 - MachineProfile
    from executors.environment import cpu_model

    lines = [
        "# Constants of the CPU memory model (planner.memory.cpu). [reference_machine] is the machine-dependent",
        "# part as measured on the machine that wrote this file (executors.machine_profile measures it on each",
        "# user's machine); [paths] and [steps] are the portable remainder beyond it.",
        "# Regenerate with `python benchmarks/cpu_profile.py --write` (bytes; see that script for the formulas).",
        f"# Measured {datetime.date.today().isoformat()} on {cpu_model()} ({os.cpu_count()} CPUs).",
        "schema_version = 2",
        'measured_with = "python benchmarks/cpu_profile.py --write"',
        'calibration_models = "random-initialised Llama (hidden 384, 6 layers, 6/2 heads, MLP 1024, vocab 2048) and '
        'BERT (hidden 512, 4 layers, 8 heads, MLP 2048, vocab 30522), float32 checkpoints"',
        "",
        "[reference_machine]",
        f"schema_version = {machine.schema_version}",
        f"startup_bytes = {machine.startup_bytes:.0f}",
        f"bitsandbytes_import_bytes = {machine.bitsandbytes_import_bytes:.0f}",
        "",
        "[reference_machine.key]",
    ]
    lines += [f'{name} = "{value}"' for name, value in machine.key.items()]
    for table in ("load_bytes", "forward_bytes"):
        lines += ["", f"[reference_machine.{table}]"]
        lines += [f'"{kind}" = {value:.0f}' for kind, value in getattr(machine, table).items()]
    sections = [("paths", key, values) for key, values in paths.items()]
    sections += [("steps", key, values) for key, values in steps.items()]
    for table, key, values in sections:
        lines += ["", f'[{table}."{key}"]']
        lines += [f"{name} = {value:.0f}" if name.endswith("bytes") else f"{name} = {value}"
                  for name, value in values.items()]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="write planner/data/cpu_profile.toml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fitplan-cpu-profile-") as tmp:
        root = Path(tmp)
        os.environ.setdefault("FITPLAN_CACHE", str(root / "cache"))  # references of throw-away models
        from executors.machine_profile import measure_machine_profile
        from planner.memory.cpu import save_machine_profile

        machine = measure_machine_profile()
        save_machine_profile(machine)  # in this run's cache: the runs below do not measure it again
        models = build_models(root / "models")
        paths, plain, bnb, steps = measure(models, root / "runs")
    print(f"startup: runs {statistics.median(plain) / 2**20:.1f} MiB, probe {machine.startup_bytes / 2**20:.1f} MiB; "
          f"bitsandbytes: runs {(statistics.median(bnb) - statistics.median(plain)) / 2**20:.1f} MiB, probe "
          f"{machine.bitsandbytes_import_bytes / 2**20:.1f} MiB", file=sys.stderr)
    paths, steps = portable(paths, steps, machine)
    text = render(paths, steps, machine)
    print(text)
    if args.write:
        target = Path(__file__).resolve().parents[1] / "planner" / "data" / "cpu_profile.toml"
        target.write_text(text)
        print(f"wrote {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
