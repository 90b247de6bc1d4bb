"""The bad-input battery (issue 13): user mistakes end in one clear line, never a traceback or nonsense.

Each CLI case asserts exit code 2, no traceback, a last line starting with the program's error prefix
and naming the offending flag or field; each Python case asserts the documented exception type
(a ``FitplanError`` / ``CatalogError``, both ``ValueError``) and the keyword or field in the message.
"""

from __future__ import annotations

import json
import math

import pytest

import hardware_db
from planner import estimate_memory
from planner.cli import main
from planner.errors import FitplanError, InvalidConfigError, InvalidRequestError, UnknownModelError
from planner.models import get_model
from planner.sizing import size_cluster, what_fits

MODEL = "meta-llama/Llama-3.1-8B"
NAN, INF = float("nan"), float("inf")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


@pytest.fixture
def files(tmp_path):
    """Paths of malformed inputs."""
    (tmp_path / "list.json").write_text("[1, 2, 3]")
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "no_type.json").write_text(json.dumps({"hidden_size": 64}))
    (tmp_path / "moe.json").write_text(json.dumps({
        "model_type": "brand_new_moe", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 128, "vocab_size": 256, "num_local_experts": 8}))
    (tmp_path / "empty_dir").mkdir()
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256}))
    (tmp_path / "a_file").write_text("not a directory")
    for name, value in (("inf", "inf"), ("nan", "nan")):
        (tmp_path / f"hw_{name}.toml").write_text(f"""schema_version = 1
[[accelerator]]
name = "Test GPU {name}"
vendor = "Test"
architecture = "Test"
memory_gb = {value}
memory_usable_gib = 10.0
memory_usable_basis = "test"
memory_kind = "dedicated"
supports_bf16 = true
supports_fp8 = false
supports_fp4 = false
supports_sparse_2_4 = false
gpus_per_node = 1
source = "test"
verified = false
""")
    return tmp_path


# (argv builder, fragments the error line must contain)
CLI_CASES = [
    ("config_not_an_object", lambda p: ["estimate", str(p / "list.json")], ["JSON object", "list"]),
    ("config_not_json", lambda p: ["estimate", str(p / "broken.json")], ["not a readable JSON"]),
    ("config_without_model_type", lambda p: ["estimate", str(p / "no_type.json")], ["model_type"]),
    ("config_unknown_moe_type", lambda p: ["estimate", str(p / "moe.json")], ["mixture-of-experts"]),
    ("directory_without_config", lambda p: ["estimate", str(p / "empty_dir")], ["no config.json"]),
    ("name_5000_chars", lambda p: ["estimate", "x" * 5000], ["5,000 characters"]),
    ("path_5000_chars", lambda p: ["estimate", "./" + "a" * 5000], ["cannot read"]),
    ("unknown_hub_id_offline", lambda p: ["estimate", "Qwen/Qwen2.5-7B-Instruct-Turbo"], ["Did you mean"]),
    ("unknown_precision", lambda p: ["estimate", MODEL, "--precision", "fp9"], ["fp9", "Did you mean"]),
    ("batch_zero", lambda p: ["estimate", MODEL, "--batch", "0"], ["batch"]),
    ("negative_seq_len", lambda p: ["estimate", MODEL, "--seq-len", "-5"], ["--seq-len"]),
    ("training_tokens_nan", lambda p: ["estimate", MODEL, "--mode", "lora", "--training-tokens", "nan"],
     ["--training-tokens", "finite"]),
    ("mfu_inf", lambda p: ["estimate", MODEL, "--mode", "lora", "--mfu", "inf"], ["--mfu", "finite"]),
    ("max_memory_gb_nan", lambda p: ["hardware", "list", "--max-memory-gb", "nan"], ["--max-memory-gb", "finite"]),
    ("min_memory_gb_inf", lambda p: ["hardware", "list", "--min-memory-gb", "inf"], ["--min-memory-gb", "finite"]),
    ("gpu_memory_utilization_nan", lambda p: ["estimate", MODEL, "--engine", "vllm", "--gpu-memory-utilization",
                                              "nan"], ["--gpu-memory-utilization"]),
    ("gpu_memory_utilization_range", lambda p: ["estimate", MODEL, "--engine", "vllm", "--gpu-memory-utilization",
                                                "1.5"], ["--gpu-memory-utilization"]),
    ("hardware_file_inf_memory", lambda p: ["--hardware-file", str(p / "hw_inf.toml"), "fits", "--gpu",
                                            "Test GPU inf"], ["memory_gb", "finite"]),
    ("hardware_file_nan_memory", lambda p: ["--hardware-file", str(p / "hw_nan.toml"), "hardware", "list"],
     ["memory_gb", "finite"]),
    ("capacity_inf", lambda p: ["fits", "--gpu", "infGB"], ["infGB"]),
    ("capacity_zero", lambda p: ["fits", "--gpu", "0GB"], ["positive"]),
    ("fits_kv_dtype_unknown", lambda p: ["fits", "--gpu", "16GB", "--kv-dtype", "fp9"], ["KV-cache dtype 'fp9'"]),
    ("fits_kv_dtype_engine_lacks", lambda p: ["fits", "--gpu", "16GB", "--engine", "vllm", "--kv-dtype", "int4"],
     ["int4", "vllm"]),
    ("fits_engine_cannot_run_precision", lambda p: ["fits", "--gpu", "16GB", "--engine", "vllm", "--precision",
                                                    "nf4"], ["nf4", "vllm", "--precision"]),
    ("estimate_engine_cannot_run_precision", lambda p: ["estimate", MODEL, "--precision", "q4_k_m"],
     ["q4_k_m", "llamacpp"]),
    ("fits_lora_rank_zero", lambda p: ["fits", "--gpu", "16GB", "--mode", "lora", "--lora-rank", "0"],
     ["--lora-rank"]),
    ("estimate_lora_rank_zero", lambda p: ["estimate", MODEL, "--mode", "lora", "--lora-rank", "0"],
     ["--lora-rank"]),
    ("grad_accum_zero", lambda p: ["estimate", MODEL, "--mode", "full", "--grad-accum", "0"], ["--grad-accum"]),
    ("training_flag_without_mode", lambda p: ["estimate", MODEL, "--lora-rank", "8"], ["--lora-rank", "--mode"]),
    ("default_bf16_on_t4", lambda p: ["estimate", MODEL, "--gpu", "T4"],
     ["default precision", "--precision fp16"]),
    ("default_checkpoint_format_on_t4", lambda p: ["estimate", "deepseek-ai/DeepSeek-V3", "--gpu", "T4"],
     ["default precision", "checkpoint"]),
    ("train_precision_named_as_flag", lambda p: ["estimate", MODEL, "--mode", "lora", "--gpu", "T4"],
     ["--train-precision"]),
    ("unknown_vendor", lambda p: ["hardware", "list", "--vendor", "nvidiaa"], ["nvidiaa", "Did you mean"]),
    ("unknown_gpu", lambda p: ["fits", "--gpu", "RTX 4099"], ["RTX 4099"]),
    ("missing_hardware_file", lambda p: ["--hardware-file", str(p / "nope.toml"), "hardware", "list"],
     ["nope.toml"]),
    ("run_out_is_a_file", lambda p: ["run", str(p / "model"), "--quant", "nf4", "--out", str(p / "a_file")],
     ["--out", "is a file"]),
    ("run_out_below_a_file", lambda p: ["run", str(p / "model"), "--quant", "nf4", "--out",
                                        str(p / "a_file" / "sub")], ["--out", "not a directory"]),
    ("run_sparsity_out_of_range", lambda p: ["run", str(p / "model"), "--sparsity", "2"], ["--sparsity"]),
    ("run_sparsity_nan", lambda p: ["run", str(p / "model"), "--sparsity", "nan"], ["--sparsity", "finite"]),
    ("run_distill_depth_zero", lambda p: ["run", str(p / "model"), "--distill-depth", "0"], ["--distill-depth"]),
]


@pytest.mark.parametrize("argv, fragments", [case[1:] for case in CLI_CASES], ids=[case[0] for case in CLI_CASES])
def test_cli_mistake_is_one_line_and_exit_2(capsys, files, argv, fragments):
    code = main(argv(files))
    out, err = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in err and "Traceback" not in out
    assert err.count("\n") == 1, err  # one line
    last = err.strip()
    assert last.startswith("fitplan: error: "), err
    assert "error:" in last
    for fragment in fragments:
        assert fragment in last, (fragment, last)
    assert len(last) < 600  # a 5,000-character name is not echoed back


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("fitplan ")


# -- Python API --------------------------------------------------------------------------------

def test_string_where_a_list_belongs_is_a_list_of_one():
    frame = what_fits("16GB", precisions="bf16")
    assert set(frame["precision"].astype(str)) == {"bf16"}
    frame = what_fits("16GB", models=MODEL)
    assert set(frame["model"].astype(str)) == {MODEL}
    cluster = size_cluster(MODEL, gpus="NVIDIA H100 SXM")
    assert list(cluster["gpu"]) == ["NVIDIA H100 SXM"]


@pytest.mark.parametrize("call, keyword", [
    (lambda: what_fits("16GB", models=[]), "models="),
    (lambda: what_fits("16GB", precisions=[]), "precisions="),
    (lambda: size_cluster(MODEL, gpus=[]), "gpus="),
    (lambda: what_fits("16GB", models={"a": 1}), "models="),
])
def test_empty_or_wrong_lists_are_errors_not_all(call, keyword):
    with pytest.raises(InvalidRequestError, match=keyword):
        call()


@pytest.mark.parametrize("call, fragment", [
    (lambda: what_fits("16GB", kv_dtype="fp9"), "fp9"),
    (lambda: what_fits("16GB", mode="lora", lora_rank=0), "LoRA rank"),
    (lambda: what_fits("RTX 4090", [MODEL], ["q4_k_m"], engine="hf"), "llamacpp"),
    (lambda: what_fits("16GB", [MODEL], ["nf4"], engine="vllm"), "vllm"),
    (lambda: what_fits("16GB", context=NAN), "context"),
    (lambda: what_fits("16GB", mode="lora", training_tokens=NAN), "training_tokens"),
    (lambda: estimate_memory(MODEL, mode="lora", gpu="NVIDIA H100 SXM", training_tokens=NAN), "training_tokens"),
    (lambda: estimate_memory(MODEL, mode="lora", gpu="NVIDIA H100 SXM", training_tokens=INF), "training_tokens"),
    (lambda: estimate_memory(MODEL, engine="vllm", gpu_memory_utilization=NAN), "gpu_memory_utilization"),
    (lambda: estimate_memory(MODEL, batch=NAN), "batch"),
    (lambda: estimate_memory(MODEL, seq_len=INF), "seq_len"),
    (lambda: estimate_memory(MODEL, gpu="T4"), "default precision"),
    (lambda: size_cluster(MODEL, seq_len=NAN), "seq_len"),
    (lambda: size_cluster(MODEL, mode="lora", training_tokens=NAN), "training_tokens"),
])
def test_python_api_rejects_invalid_requests(call, fragment):
    with pytest.raises(FitplanError, match=fragment):
        call()


@pytest.mark.parametrize("kwargs", [{"max_memory_gb": NAN}, {"min_memory_gb": INF}])
def test_catalog_filters_reject_non_finite_bounds(kwargs):
    with pytest.raises(hardware_db.CatalogError, match="finite"):
        hardware_db.list(**kwargs)


def test_hardware_file_with_infinite_memory_is_rejected(files):
    with pytest.raises(hardware_db.CatalogError, match="memory_gb"):
        hardware_db.load_user_files([files / "hw_inf.toml"])
    assert not any(math.isinf(acc.memory_gb) for acc in hardware_db.list())


@pytest.mark.parametrize("model, error, fragment", [
    ([1, 2], UnknownModelError, "got list"),
    ("x" * 5000, UnknownModelError, "5,000 characters"),
    ("", UnknownModelError, "empty"),
    ({"hidden_size": 64}, InvalidConfigError, "model_type"),
])
def test_get_model_rejects_what_is_not_a_model(model, error, fragment):
    with pytest.raises(error, match=fragment):
        get_model(model)
