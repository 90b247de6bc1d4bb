"""Every compression step on every family transformers builds on CPU: applied measurably, or refused up front.

Tiny random models from each family's config class (hidden 64, 2 blocks, 4 heads, 2 key/value heads
where the family has GQA, MLP 128: widths the bitsandbytes 4-bit CPU kernel takes). For each family and
step the test checks what the step did to the real modules (zeros in every block weight, bitsandbytes
modules in place of every block linear, smaller tensors and a smaller config) and that the planner's
derived spec predicts the parameter count the step produced; a refused step raises before touching
the model, with the reason.
"""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

from executors.steps import StepContext, apply_step
from executors.steps.layout import ModelLayout
from executors.steps.linears import is_dense, weight_matrix
from executors.steps.masks import is_valid_nm
from executors.steps.storage import count_params, state_dict_bytes
from planner.errors import FitplanError, UnsupportedError
from planner.models.derive import derive_spec, low_rank_params
from planner.strategy import CompressionStrategy, DistillationSpec, LowRankSpec, QuantizationSpec, SparsitySpec

pytestmark = pytest.mark.exec

_GQA = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=128, vocab_size=128, max_position_embeddings=64)
FAMILIES: dict[str, dict] = {
    "llama": dict(model_type="llama", **_GQA),
    "qwen2": dict(model_type="qwen2", **_GQA),
    "qwen3": dict(model_type="qwen3", head_dim=16, **_GQA),
    "mistral": dict(model_type="mistral", **_GQA),
    "gemma2": dict(model_type="gemma2", head_dim=16, **_GQA),
    "gemma3_text": dict(model_type="gemma3_text", head_dim=16, **_GQA),
    "phi3": dict(model_type="phi3", pad_token_id=0, bos_token_id=1, eos_token_id=2, **_GQA),
    "gpt2": dict(model_type="gpt2", n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=64,
                 bos_token_id=1, eos_token_id=2),
    "gpt_neox": dict(model_type="gpt_neox", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, vocab_size=128, max_position_embeddings=64),
    "falcon": dict(model_type="falcon", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=128),
    "opt": dict(model_type="opt", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
                vocab_size=128, word_embed_proj_dim=64, max_position_embeddings=64),
    "bert": dict(model_type="bert", hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                 vocab_size=128, max_position_embeddings=64),
    "t5": dict(model_type="t5", d_model=64, num_layers=2, num_heads=4, d_kv=16, d_ff=128, vocab_size=128),
}
HEADLESS = {"gpt2", "gpt_neox", "falcon", "opt", "bert"}  # config derives the head size from hidden / heads
STEPS: dict[str, object] = {
    "int8": QuantizationSpec(weights="int8"),
    "nf4": QuantizationSpec(weights="nf4"),
    "unstructured": SparsitySpec(level=0.5),
    "2:4": SparsitySpec(level=0.5, pattern="2:4"),
    "wanda": SparsitySpec(level=0.5, method="wanda"),
    "heads": SparsitySpec(level=0.5, pattern="heads"),
    "ffn": SparsitySpec(level=0.5, pattern="ffn"),
    "layers": SparsitySpec(level=0.5, pattern="layers"),
    "low-rank": LowRankSpec(rank_ratio=0.25),
    "distill": DistillationSpec(depth_ratio=0.5, width_ratio=0.5, steps=2, batch_size=2, seq_len=16),
}


def refusal(family: str, step: str) -> str | None:
    """The reason a step is refused for a family (a regex of the error), None when it must apply."""
    if family == "t5" and step in ("heads", "layers", "distill"):
        return "encoder-decoder"
    if family in HEADLESS and step == "heads":
        return "hidden_size / num_attention_heads"
    return None


_BUILT: dict[str, torch.nn.Module] = {}


def build(family: str) -> torch.nn.Module:
    if family not in _BUILT:
        torch.manual_seed(0)
        config = transformers.AutoConfig.for_model(**FAMILIES[family])
        auto = {"bert": transformers.AutoModel, "t5": transformers.AutoModelForSeq2SeqLM}.get(
            family, transformers.AutoModelForCausalLM)
        _BUILT[family] = auto.from_config(config).eval()
    return copy.deepcopy(_BUILT[family])


def _batches(batch_size, seq_len):
    generator = torch.Generator().manual_seed(0)
    while True:
        yield torch.randint(3, 128, (batch_size, seq_len), generator=generator)


def _context():
    return StepContext(batches=_batches, calibration_batches=1, calibration_batch_size=2, calibration_seq_len=16)


def _forward(model):
    ids = torch.randint(3, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            out = model(input_ids=ids, decoder_input_ids=ids[:, :4])
        else:
            out = model(input_ids=ids)
    tensor = out.logits if hasattr(out, "logits") else out.last_hidden_state
    assert torch.isfinite(tensor.float()).all()
    return tensor


def _block_sites(model):
    return [s for s in ModelLayout(model).linear_sites() if s.layer is not None]


CASES = [(family, step) for family in FAMILIES for step in STEPS]


@pytest.mark.parametrize(("family", "step"), CASES, ids=[f"{f}-{s}" for f, s in CASES])
def test_step_applies_or_is_refused(family, step, tmp_path):
    model = build(family)
    spec = STEPS[step]
    original = ModelLayout(model).spec
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reason = refusal(family, step)
    if reason is not None:
        with pytest.raises(UnsupportedError, match=reason):
            apply_step(model, spec, _context())
        with pytest.raises(UnsupportedError, match=reason):  # the planner refuses the same request
            derive_spec(original, CompressionStrategy(**{_field(spec): spec}))
        after = model.state_dict()
        assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
        return

    sites = _block_sites(model)
    params = count_params(model)
    new, report = apply_step(model, spec, _context())
    assert report.modules or step == "distill", report.summary
    _forward(new)
    strategy = CompressionStrategy(**{_field(spec): spec})

    if step in ("int8", "nf4"):
        quantized = [s for s in _block_sites(new) if not is_dense(s.module)]
        assert len(quantized) == len(sites)  # every block linear, Conv1D and fused ones included
        assert state_dict_bytes(new) < sum(v.numel() * v.element_size() for v in before.values())
    elif step in ("unstructured", "wanda"):
        for site in _block_sites(new):
            weight = weight_matrix(site.module)
            assert int((weight == 0).sum()) == round(weight.numel() / 2), site.name
        assert report.metrics["sparsity_achieved"] >= 0.5
    elif step == "2:4":
        checked = [s for s in _block_sites(new) if s.in_features % 4 == 0]
        assert len(checked) == len(sites)
        assert all(is_valid_nm(weight_matrix(s.module), 2, 4) for s in checked)
    elif step == "low-rank":
        assert count_params(new) == low_rank_params(original, spec) < params
    else:  # structural / student: smaller tensors, a config that describes them, the planner's count
        if step == "distill":
            assert report.structure["teacher_layers_kept"] == [0] and len(report.history) == 2
        assert count_params(new) == derive_spec(original, strategy, kept_layers=report.structure.get(
            "kept_layers")).params.total < params
        new.save_pretrained(tmp_path)
        reloaded = type(new).from_pretrained(tmp_path).eval()
        torch.testing.assert_close(_forward(reloaded), _forward(new))


def _field(spec) -> str:
    return {QuantizationSpec: "quantization", SparsitySpec: "sparsity", LowRankSpec: "low_rank",
            DistillationSpec: "distillation"}[type(spec)]


def test_unknown_model_type_still_runs_unstructured_steps_and_refuses_structural_ones():
    """A family the planner cannot describe (GPT-J): found by what its modules compute, not by the planner."""
    torch.manual_seed(0)
    config = transformers.GPTJConfig(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, vocab_size=128, n_positions=64)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    layout = ModelLayout(model)
    assert layout.spec is None and "gptj" in layout.spec_error
    components = {s.name.rpartition(".")[2]: s.component for s in layout.linear_sites() if s.layer == 0}
    assert components == {"q_proj": "attention", "k_proj": "attention", "v_proj": "attention",
                          "out_proj": "attention", "fc_in": "mlp", "fc_out": "mlp"}
    pruned, report = apply_step(copy.deepcopy(model), SparsitySpec(level=0.5), _context())
    assert len(report.modules) == 12 and report.metrics["sparsity_achieved"] >= 0.5
    quantized, report = apply_step(copy.deepcopy(model), QuantizationSpec(weights="int8"), _context())
    assert len(report.modules) == 12
    _forward(quantized)
    with pytest.raises(UnsupportedError, match="needs the planner's description of model_type 'gptj'"):
        apply_step(copy.deepcopy(model), SparsitySpec(level=0.5, pattern="ffn"), _context())


def test_a_step_that_changes_nothing_fails():
    from executors.steps.report import NoEffectError

    model = build("llama")
    with pytest.raises(NoEffectError, match="factorised no module"):
        apply_step(model, LowRankSpec(rank_ratio=0.95), _context())
    with pytest.raises(FitplanError, match="would change nothing"):
        apply_step(model, SparsitySpec(level=0.1, pattern="layers"), _context())
    quantized, _ = apply_step(model, QuantizationSpec(weights="int8"), _context())
    with pytest.raises(NoEffectError, match="changed no module"):  # everything already quantized
        apply_step(quantized, SparsitySpec(level=0.5), _context())


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_fused_moe_experts_are_pruned_per_expert(pattern):
    """transformers 5 stores a MoE layer's experts as 3-D tensors (experts x out x in): each expert's matrix
    is pruned like a Linear; quantization keeps them dense and says so."""
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(model_type="mixtral", num_local_experts=4, num_experts_per_tok=2, **_GQA)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    pruned, report = apply_step(model, SparsitySpec(level=0.5, pattern=pattern), _context())
    layout = ModelLayout(pruned)
    experts = layout.expert_weights()
    assert len(experts) == 4 and report.metrics["sparsity_achieved"] == 0.5
    for path in experts:
        for matrix in layout.expert_matrices(path):
            assert int((matrix == 0).sum()) == matrix.numel() // 2
            assert pattern != "2:4" or is_valid_nm(matrix, 2, 4)
    _forward(pruned)
    _, report = apply_step(pruned, QuantizationSpec(weights="int8"), _context())
    assert all("fused 3-D expert tensor" in report.skipped_reasons()[path] for path in experts)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_linear_maps_to_the_planner_group_of_its_shape(family):
    """Prediction and execution agree module by module: each linear-like module (Conv1D and fused ones
    included) is matched to the planner's ParamGroup with the same role and the same in/out features,
    and every linear group of the spec is found in the model as often as it says."""
    model = build(family)
    layout = ModelLayout(model)
    sites = [s for s in layout.linear_sites() if not (s.component == "lm_head" and layout.tied)]
    found: dict[str, int] = {}
    for site in sites:
        assert site.basis == "planner", site.name
        assert (site.group.in_features, site.group.out_features) == (site.in_features, site.out_features), site.name
        found[site.group.name] = found.get(site.group.name, 0) + 1
    assert found == {g.name: g.count for g in layout.spec.linear_groups()}


def test_fine_tuning_between_gradual_steps_keeps_conv1d_weights_pruned():
    model = build("gpt2")
    spec = SparsitySpec(level=0.5, gradual_steps=2, finetune_steps=2, finetune_learning_rate=1e-2)
    context = _context()
    context.evaluator = lambda m: 1.0
    pruned, report = apply_step(model, spec, context)
    assert report.metrics["sparsity_achieved"] == 0.5
    for site in _block_sites(pruned):
        assert int((site.module.weight == 0).sum()) == site.module.weight.numel() // 2, site.name
