"""Measure the machine-dependent part of the CPU memory model on this machine, once, and cache it.

The CPU memory model (:mod:`planner.memory.cpu`) splits a run's resident memory into what depends on
the machine and its software stack, measured here, and a portable part kept as data
(``planner/data/cpu_profile.toml``). The machine part, :class:`planner.memory.cpu.MachineProfile`:

- ``startup_bytes``: peak RSS of a fresh interpreter once torch, transformers and the executors'
  modules are imported (the ``startup`` phase of every isolated run);
- ``bitsandbytes_import_bytes``: what importing bitsandbytes adds (its CPU libraries);
- ``load_bytes[kind]``: RSS added by loading a tiny model of that kind with the executors' loader
  (transformers' loading machinery and model code, safetensors, the tokenizer library), its weights
  (a few KiB) aside;
- ``forward_bytes[kind]``: RSS a first forward leaves beyond its activations (math-library code
  pages, thread pools, allocator caches), at the executors' evaluation batch shape.

Each kind is probed in its own fresh process (:func:`executors.isolation.run_isolated`), as a real run
loads one model into a fresh process; a first job builds the tiny probe models (random weights,
word-level tokenizers; nothing is downloaded). About 15 s once per machine and software stack; the
result is cached as ``<cache>/cpu-machine/<key>.json`` (:func:`planner.memory.cpu.machine_key`: Python,
platform, C library, CPU, thread settings and the versions of the exec packages) and used by every
later prediction on this machine.

    python -m executors.machine_profile [--force]     # measure (or show the cached figures)
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from planner.memory.cpu import KINDS, MachineProfile, machine_key, machine_profile_path, save_machine_profile

# Tiny shapes: their weights and activations are negligible next to the overheads being measured.
PROBE_CONFIGS: dict[str, dict[str, Any]] = {
    "causal-lm": {"class": "LlamaForCausalLM", "config": "LlamaConfig", "vocab_size": 64, "hidden_size": 32,
                  "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                  "intermediate_size": 64, "max_position_embeddings": 256, "tie_word_embeddings": False,
                  "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0},
    "encoder": {"class": "BertModel", "config": "BertConfig", "vocab_size": 64, "hidden_size": 32,
                "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64,
                "max_position_embeddings": 128, "pad_token_id": 0},
}
WORDS = [f"w{i}" for i in range(60)]
PROBE_TIMEOUT_S = 600.0  # each probe process: imports + a tiny model; far less even on a loaded machine


def build_probe_models(request: dict[str, Any], progress: Any) -> dict[str, str]:
    """Job: save the tiny probe models (random weights, float32 safetensors) with word-level tokenizers."""
    from executors._imports import import_torch, import_transformers

    progress("build")
    torch = import_torch()
    transformers = import_transformers()
    from tokenizers import Tokenizer, models, pre_tokenizers

    torch.manual_seed(0)
    vocab = {token: i for i, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    paths = {}
    for kind, spec in PROBE_CONFIGS.items():
        settings = {k: v for k, v in spec.items() if k not in ("class", "config")}
        model = getattr(transformers, spec["class"])(getattr(transformers, spec["config"])(**settings))
        target = Path(request["dir"]) / kind
        model.save_pretrained(target)
        backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
        transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                             model_max_length=128).save_pretrained(target)
        paths[kind] = str(target)
    return paths


def probe(request: dict[str, Any], progress: Any) -> dict[str, float]:
    """Job: the machine part for one model kind, in this fresh process (see the module docstring)."""
    from executors.candidate import _imports
    from executors.measure import read_status_bytes, reset_peak_rss
    from planner.memory.cpu import CpuWorkload
    from planner.strategy import CompressionStrategy

    progress("startup")
    torch = _imports(CompressionStrategy())
    from executors.environment import describe_environment  # noqa: F401 - as run_candidate imports them
    from executors.loading import load_model, resolve_device  # noqa: F401
    from planner.execution import split_load_time_quantization  # noqa: F401

    startup = read_status_bytes()["VmHWM"]
    progress("bitsandbytes")
    from executors._imports import import_bitsandbytes

    import_bitsandbytes()
    bitsandbytes = read_status_bytes()["VmHWM"] - startup
    kind = request["kind"]
    progress("load")
    reset_peak_rss()
    before = read_status_bytes()["VmRSS"]
    loaded = load_model(request["model_dir"], device="cpu")
    after_load = read_status_bytes()["VmRSS"]
    progress("forward")
    workload = CpuWorkload.default(kind)
    shape = (workload.evaluate_batch, workload.evaluate_seq_len)
    input_ids = torch.randint(4, PROBE_CONFIGS[kind]["vocab_size"], shape)
    reset_peak_rss()
    with torch.no_grad():
        output = loaded.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
        first = output[0]
        activations = first.numel() * first.element_size()
        del output, first
    forward = read_status_bytes()["VmHWM"] - after_load - activations
    return {"startup_bytes": startup, "bitsandbytes_import_bytes": bitsandbytes, "load_bytes": after_load - before,
            "forward_bytes": max(0, forward)}


def measure_machine_profile(work_dir: str | Path | None = None) -> MachineProfile:
    """Run the probes (three fresh processes, ~15 s) and return the machine part (not cached)."""
    from executors.isolation import run_isolated

    with tempfile.TemporaryDirectory(prefix="fitplan-machine-") as tmp:
        root = Path(work_dir) if work_dir is not None else Path(tmp)
        built = run_isolated("executors.machine_profile:build_probe_models", {"dir": str(root / "models")},
                             root / "build", timeout_s=PROBE_TIMEOUT_S)
        if built.status != "ok":
            raise RuntimeError(f"building the probe models failed: {built.reason}")
        figures: dict[str, dict[str, float]] = {}
        for kind in KINDS:
            outcome = run_isolated("executors.machine_profile:probe",
                                   {"kind": kind, "model_dir": built.payload[kind]}, root / f"probe-{kind}",
                                   timeout_s=PROBE_TIMEOUT_S)
            if outcome.status != "ok":
                raise RuntimeError(f"the {kind} memory probe failed: {outcome.reason}")
            figures[kind] = outcome.payload
    both = lambda name: statistics.fmean(f[name] for f in figures.values())  # noqa: E731 - measured per kind
    return MachineProfile(key=machine_key(), startup_bytes=both("startup_bytes"),
                          bitsandbytes_import_bytes=both("bitsandbytes_import_bytes"),
                          load_bytes={k: f["load_bytes"] for k, f in figures.items()},
                          forward_bytes={k: f["forward_bytes"] for k, f in figures.items()})


def ensure_machine_profile(*, force: bool = False) -> MachineProfile:
    """The cached machine part for this machine and software stack, measured first when missing,
    unreadable or ``force``d."""
    from planner.memory.cpu import cached_machine_profile

    if not force:
        cached = cached_machine_profile()
        if cached is not None:
            return cached
    profile = measure_machine_profile()
    save_machine_profile(profile)
    return profile


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="measure again even when cached")
    args = parser.parse_args(argv)
    profile = ensure_machine_profile(force=args.force)
    print(json.dumps(profile.model_dump(), indent=2))
    print(f"cached in {machine_profile_path()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
