"""``executors.profile`` on a tiny Llama built here from a config class: the profile's shape, entries that
equal an independent measurement of the same change, block drops equal to removing the layer, the model left
intact, the on-disk cache, the planner's profile basis, and the CLI's mistakes."""

from __future__ import annotations

import json
import math

import pytest

pytestmark = pytest.mark.exec

FORMATS = ("int8", "nf4", "hqq-int4")
SPARSITY = (("unstructured", 0.5), ("2:4", 0.5))
SETTINGS = dict(formats=FORMATS, sparsity=SPARSITY, sparsity_method="magnitude", samples=2, seq_len=32)


def build_tiny_llama(path, layers: int = 2):
    """A ``layers``-block Llama (hidden 64) with a small BPE tokenizer, saved with save_pretrained."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from executors.corpus import load_corpus
    from executors.fixtures import train_tokenizer

    tokenizer = train_tokenizer(load_corpus(None).train[:200])
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tokenizer), max_position_embeddings=256,
                         tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # larger weights than the init's, so that the options change the outputs visibly
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(8.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FITPLAN_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def outcome(tiny, cache):
    from executors import run_profile

    return run_profile(tiny, **SETTINGS)


def _perplexity(model, tokenizer):
    from executors.profiling import _sized
    from executors.evaluate import get_evaluator

    evaluator = _sized(get_evaluator("perplexity", "causal-lm"), 2, 32)
    return evaluator.evaluate(model, tokenizer, None).value


def test_profile_covers_every_block_group_and_option(outcome):
    p = outcome.profile
    assert not outcome.cached and outcome.path.is_file()
    assert p.model.num_blocks == 2 and p.model.family == "llama"
    assert p.evaluator.name == "perplexity" and p.evaluator.metric_family == "perplexity"
    assert p.settings.samples == 2 and p.settings.seq_len == 32 and p.settings.sparsity_method == "magnitude"
    options = {"int8", "nf4", "hqq-int4", "sparsity:unstructured:0.5", "sparsity:2:4:0.5"}
    assert p.options == options
    assert {(e.block, e.group, e.option) for e in p.entries} == {(b, g, o) for b in (0, 1)
                                                                 for g in ("attention", "mlp") for o in options}
    assert [d.block for d in p.block_drop] == [0, 1]
    assert {w.option for w in p.whole} == options  # each option on every group at once
    assert p.total_seconds > 0 and all(e.seconds > 0 for e in p.entries)
    # every option changed the model's outputs (a step that did nothing would score exactly 100)
    assert all(e.retained_pct != 100.0 for e in p.entries) and all(d.retained_pct != 100.0 for d in p.block_drop)
    assert json.loads(outcome.path.read_text())["format"] == "fitplan.sensitivity_profile"


def test_entries_equal_an_independent_measurement_and_the_model_is_restored(tiny, outcome):
    import torch

    from executors.loading import load_model
    from executors.steps.masks import nm_prune_mask

    p = outcome.profile
    loaded = load_model(tiny)
    model, tokenizer = loaded.model, loaded.tokenizer
    baseline = _perplexity(model, tokenizer)
    assert baseline == pytest.approx(p.evaluator.baseline, rel=1e-6)
    mlp = model.model.layers[1].mlp
    with torch.no_grad():  # 2:4 by magnitude on block 1's MLP, written here without the profiler
        for linear in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
            linear.weight.masked_fill_(nm_prune_mask(linear.weight.abs(), 2, 4), 0)
    assert 100 * baseline / _perplexity(model, tokenizer) == pytest.approx(p.effect(1, "mlp", "sparsity:2:4:0.5"),
                                                                           rel=1e-5)
    fresh = load_model(tiny).model
    del fresh.model.layers[0]  # the block removed for real
    fresh.config.num_hidden_layers = 1
    for i, layer in enumerate(fresh.model.layers):
        layer.self_attn.layer_idx = i
    assert 100 * baseline / _perplexity(fresh, tokenizer) == pytest.approx(p.drop_effect(0), rel=1e-5)


def test_profiling_leaves_the_weights_as_they_were(tiny):
    import torch

    from executors.loading import load_model
    from executors.profiling import _applied, _block_groups, _dropped

    model = load_model(tiny).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = _block_groups(model)
    for option in ("bf16", "nf4", "hqq-int4", "sparsity:unstructured:0.5", "sparsity:ffn:0.5"):
        with _applied(model, groups[0]["mlp"], option, "magnitude", {}, "cpu", 0) as ok:
            assert ok
            changed = model.model.layers[0].mlp.down_proj
            assert type(changed).__name__ != "Linear" or bool((changed.weight == 0).any())
    with _dropped(model.model.layers[1]):
        pass
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_rerun_reuses_the_cache_and_other_settings_do_not(tiny, outcome, monkeypatch):
    import executors.profiling as profiling

    def fail(*args, **kwargs):
        raise AssertionError("measured again instead of reusing the cache")

    monkeypatch.setattr(profiling, "_measure", fail)
    again = profiling.run_profile(tiny, **SETTINGS)
    assert again.cached and again.path == outcome.path and again.profile == outcome.profile
    with pytest.raises(AssertionError, match="measured again"):
        profiling.run_profile(tiny, **{**SETTINGS, "samples": 3})


def test_the_planner_predicts_from_the_profile_as_measured(tiny, outcome):
    from planner import get_model
    from planner.accuracy import predict_quality
    from planner.strategy import CompressionStrategy, QuantizationSpec, SparsitySpec

    spec = get_model(tiny)
    p = outcome.profile
    assert p.matches(spec)
    for strategy, option in ((CompressionStrategy(sparsity=SparsitySpec(level=0.5, pattern="2:4")),
                              "sparsity:2:4:0.5"),
                             (CompressionStrategy(quantization=QuantizationSpec(weights="nf4")), "nf4")):
        prior = predict_quality(spec, strategy)
        with_profile = predict_quality(spec, strategy, profile=p)
        assert prior.basis == "prior" and with_profile.basis == "profile"
        # the prediction follows the measured effects: harmless measurements lift it above the prior, harmful
        # ones push it below, and a uniformly worse profile predicts a lower quality
        def scaled(value):
            data = p.model_dump()  # validated anew: model_copy would keep the cached lookup table
            for key in ("entries", "whole"):
                data[key] = [{**e, "retained_pct": value(e["retained_pct"])} for e in data[key]]
            return type(p).model_validate(data)

        harmless = predict_quality(spec, strategy, profile=scaled(lambda _: 99.99))
        harmful = predict_quality(spec, strategy, profile=scaled(lambda _: 5.0))
        assert harmless.retained_pct > prior.retained_pct > harmful.retained_pct
        worse = predict_quality(spec, strategy, profile=scaled(lambda v: v * 0.9))
        assert worse.retained_pct < with_profile.retained_pct
        assert with_profile.retained_pct != pytest.approx(prior.retained_pct, abs=1e-6)
        # a uniform strategy is predicted as its whole-model measurement (on the profile's metric)
        whole = next(w.retained_pct for w in p.whole if w.option == option)
        assert predict_quality(spec, strategy, profile=p, metric="perplexity").retained_pct == pytest.approx(
            min(whole, 100 * math.exp(-1e-4)), rel=1e-9)


def test_cli_prints_the_profile_and_refuses_mistakes(tiny, outcome, tmp_path, capsys):
    from planner.cli import main

    out = tmp_path / "p.json"
    assert main(["profile", str(tiny), "--formats", "int8,nf4,hqq-int4", "--sparsity", "0.5,2:4",
                 "--sparsity-method", "magnitude", "--samples", "2", "--seq-len", "32", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "cached: reused" in text and "hqq4" in text and "u0.5" in text and "block dropped" in text
    table = [line for line in text.splitlines() if "attn" in line or "hqq4" in line]
    assert table and max(len(line) for line in table) <= 80
    assert json.loads(out.read_text())["entries"] == json.loads(outcome.path.read_text())["entries"]
    # the same --out again: refused before any work, the file kept
    assert main(["profile", str(tiny), "--out", str(out)]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert main(["profile", str(tmp_path / "nope")]) == 2
    assert main(["profile", str(tiny), "--formats", "nf5"]) == 2
    assert "nf4" in capsys.readouterr().err  # the close match
    assert main(["profile", str(tiny), "--sparsity", "heads"]) == 2
    assert main(["profile", str(tiny), "--formats", "gptq-int4"]) == 2
    assert main(["profile", str(tiny), "--threads", "0"]) == 2
    assert "--threads 0" in capsys.readouterr().err
    assert main(["profile", str(tiny), "--formats", "fp32"]) == 2
    assert "loaded in fp32" in capsys.readouterr().err


# -- the fast path: replayed block outputs, threads, cost ----------------------------------------------
def test_replayed_entries_equal_whole_model_evaluations(tiny, outcome):
    """The default path starts each evaluation at the changed block from the intact model's recorded
    outputs; evaluating the whole model every time (the original path) gives the same numbers."""
    from executors.evaluate import get_evaluator
    from executors.loading import read_config
    from executors.profiling import _format_options, _measure, _sized, _sparsity_options

    p = outcome.profile
    assert p.cost is not None and p.cost.block_passes_replayed > 0  # block 1's entries skipped block 0
    assert p.cost.evaluations == p.n_measurements + 1 and p.cost.evaluate_seconds > 0
    evaluator = _sized(get_evaluator("perplexity", "causal-lm"), 2, 32)
    options = _format_options(["hqq-int4", "nf4"], []) + _sparsity_options([("2:4", 0.5)])
    full = _measure(tiny, "causal-lm", read_config(tiny), evaluator, options, True, p.settings, False, [],
                    replay=False)
    assert full.cost.block_passes_replayed == 0
    for e in full.entries:
        assert p.effect(e.block, e.group, e.option) == pytest.approx(e.retained_pct, rel=1e-9, abs=1e-9)
    assert [d.retained_pct for d in full.block_drop] == pytest.approx([d.retained_pct for d in p.block_drop],
                                                                      rel=1e-9)


def test_an_hqq_entry_equals_the_quantize_step_applied_by_hand(tiny, outcome):
    import torch

    from executors.loading import load_model
    from executors.steps.hqq import hqq_linear

    loaded = load_model(tiny)
    model, tokenizer = loaded.model, loaded.tokenizer
    baseline = _perplexity(model, tokenizer)
    attention = model.model.layers[1].self_attn
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        setattr(attention, name, hqq_linear(getattr(attention, name), "hqq-int4", torch.float32, "cpu")[0])
    measured = 100 * baseline / _perplexity(model, tokenizer)
    assert measured != pytest.approx(100.0, abs=1e-6)
    assert outcome.profile.effect(1, "attention", "hqq-int4") == pytest.approx(measured, rel=1e-5)


def _linear_stack(width=8, depth=3):
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(*(torch.nn.Linear(width, width) for _ in range(depth)))


def test_replay_is_exact_guarded_and_within_its_memory_budget():
    import torch

    from executors.replay import BlockReplay, ReplayMismatch

    stack = _linear_stack()
    batches = [torch.randn(4, 8), torch.randn(2, 8)]

    def run():
        with torch.no_grad():
            return [stack(b) for b in batches]

    replay = BlockReplay(list(stack), max_bytes=10**6)
    with replay.recording():
        expected = run()
    assert replay.starts == [1, 2] and replay.calls == 2
    calls = []
    handle = stack[0].register_forward_hook(lambda *_: calls.append(1))
    for start in (1, 2):
        with replay.starting_at(start):
            got = run()
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
    handle.remove()
    assert len(calls) == 4 and type(stack[0]).forward is torch.nn.Linear.forward and "forward" not in vars(stack[0])
    with torch.no_grad():  # a change in the last block shows
        saved = stack[2].weight.clone()
        stack[2].weight.mul_(2)
        with replay.starting_at(2):
            changed = run()
        stack[2].weight.copy_(saved)
    assert not torch.equal(changed[0], expected[0])
    # other inputs than recorded, or another number of calls: refused, never a wrong score
    with pytest.raises(ReplayMismatch, match="input differs"), replay.starting_at(1), torch.no_grad():
        stack(torch.zeros(4, 8))
    with pytest.raises(ReplayMismatch, match="1 forward calls"), replay.starting_at(1), torch.no_grad():
        stack(batches[0])
    assert "forward" not in vars(stack[0])  # restored after a failure too
    # a budget for block 0's inputs and one start point's outputs keeps the later start point (a change in
    # block 1 then runs the whole stack, one in block 2 starts there: still exact)
    small = BlockReplay(list(stack), max_bytes=2 * 6 * 8 * 4)
    with small.recording():
        run()
    assert small.starts == [2] and small.start_for(1) == 0 and small.start_for(2) == 2
    assert small.recorded_bytes == 2 * 6 * 8 * 4
    with small.starting_at(2):
        assert all(torch.equal(a, b) for a, b in zip(run(), expected))
    none = BlockReplay(list(stack), max_bytes=0)
    with none.recording():
        run()
    assert none.starts == [] and none.start_for(2) == 0


_DRIFT = {"passes": 0}


def drifting_score(model, tokenizer):
    """A user metric whose first pass (the reference) scores two windows and every later pass one."""
    import torch

    from executors.evaluate.perplexity import windows_perplexity

    _DRIFT["passes"] += 1
    torch.manual_seed(0)
    windows = torch.randint(0, len(tokenizer), (2, 16))
    return 1.0 / windows_perplexity(model, windows[: 2 if _DRIFT["passes"] == 1 else 1], 8)


def test_an_evaluator_that_changes_its_batches_falls_back_to_whole_model_evaluations(tiny, cache):
    """A user evaluator whose forward calls differ between passes cannot be replayed: the profile says so,
    evaluates the whole model, and gets what the original path gets."""
    from executors.profiling import run_profile

    settings = dict(evaluator=drifting_score, formats=["int8"], sparsity=[], block_drop=False, cache=False)
    _DRIFT["passes"] = 0
    fast = run_profile(tiny, **settings)
    assert any("replay disabled" in n for n in fast.notes) and len(fast.profile.entries) == 4
    _DRIFT["passes"] = 0
    full = run_profile(tiny, **settings, replay=False)
    assert [e.retained_pct for e in fast.profile.entries] == pytest.approx([e.retained_pct for e in
                                                                            full.profile.entries], rel=1e-9)


def test_threads_follow_the_idle_cores(monkeypatch):
    import os

    from executors.environment import idle_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    for load, wanted, expected in ((0.1, 2, 2), (0.8, 2, 1), (6.0, 2, 1), (0.0, 1, 1), (0.0, 8, 2)):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        assert idle_threads(wanted) == expected


def test_threads_are_set_while_profiling_and_restored(tiny, cache):
    import torch

    from executors.profiling import run_profile

    before = torch.get_num_threads()
    outcome = run_profile(tiny, formats=["int8"], sparsity=[], block_drop=False, samples=1, seq_len=16, threads=1)
    assert outcome.profile.cost.threads == 1 and torch.get_num_threads() == before


def test_default_options_cover_the_cpu_formats_and_refuse_the_loaded_dtype():
    from executors.profiling import DEFAULT_FORMATS, _format_options, _profilable
    from planner.errors import InvalidRequestError

    assert {"bf16", "int8", "nf4", "fp4", "hqq-int8", "hqq-int4", "hqq-int3", "hqq-int2"} <= set(DEFAULT_FORMATS)
    assert _format_options(["all"], []) == _profilable() and "fp32" not in _profilable()
    assert _format_options(["bf16"], []) == ["bf16"]
    with pytest.raises(InvalidRequestError, match="loaded in fp32"):
        _format_options(["fp32"], [])


def test_the_option_table_is_split_to_fit_80_columns():
    import pandas as pd

    from executors.cli.profile import _chunks, _short
    from executors.profiling import DEFAULT_FORMATS
    from planner.render import table_width

    options = [_short(o) for o in (*DEFAULT_FORMATS, "dynamic-int8", "hqq-int4-g32", "sparsity:unstructured:0.25",
                                   "sparsity:unstructured:0.5", "sparsity:2:4:0.5")]
    assert len(set(options)) == len(options)
    frame = pd.DataFrame([{"block": b, "group": "attn", **{o: 99.5 for o in options}} for b in range(24)])
    chunks = _chunks(frame, options, 80, table_width)
    assert [c for chunk in chunks for c in chunk] == options and len(chunks) > 1
    assert all(table_width([5, 5, *(6 for _ in chunk)]) <= 80 for chunk in chunks)


def test_default_options_cover_what_a_local_search_proposes(tiny, monkeypatch, tmp_path):
    """Every weight format and unstructured level the search proposes on this CPU (search.space.executable_space)
    is measured by a default profile, so the allocator and the planner find them all in it."""
    import hardware_db.probe as probe
    import planner.planning.local as local
    from executors import minilm_dir
    from executors.profiling import DEFAULT_FORMATS, DEFAULT_SPARSITY
    from planner.models.resolve import get_model
    from search.space import executable_space
    from tests.test_local_target import PROBE
    from tests.test_local_target import local as local_constraints

    monkeypatch.setattr(probe, "probe_host", lambda: PROBE)  # a fixed host with bf16 matmuls
    monkeypatch.setenv("FITPLAN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(local, "_has_nvidia_driver", lambda: False)
    local.local_device.cache_clear()
    try:
        for model_dir in (tiny, minilm_dir()):
            space = executable_space(get_model(model_dir), local_constraints(max_memory_gb=1))
            assert set(space.weight_formats) - {"none"} <= set(DEFAULT_FORMATS)
            assert "unstructured" in space.sparsity and "2:4" in space.sparsity and ("2:4", 0.5) in DEFAULT_SPARSITY
            assert set(space.levels_for("unstructured")) <= {level for p, level in DEFAULT_SPARSITY if p == "unstructured"}
    finally:
        local.local_device.cache_clear()


def _three_block_model(family):
    import torch
    import transformers

    from tests.steps.test_family_matrix import FAMILIES

    config = dict(FAMILIES[family])
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if key in config:
            config[key] = 3
    config = transformers.AutoConfig.for_model(**config)
    torch.manual_seed(0)
    if family == "bert":
        return transformers.AutoModel.from_config(config).eval()
    if family == "t5":
        return transformers.T5ForConditionalGeneration(config).eval()
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma2", "phi3", "gpt2", "gpt_neox", "falcon", "opt", "bert",
                                    "t5"])
def test_replay_is_exact_on_every_family(family):
    """Whatever a family's blocks take and return (rotary embeddings, position biases, caches, tuples), the
    replayed outputs equal the full forward's."""
    import torch

    from executors.replay import BlockReplay
    from executors.steps.layout import ModelLayout

    model = _three_block_model(family)
    batches = [torch.randint(3, 100, (2, 12)), torch.randint(3, 100, (1, 9))]

    def run():
        out = []
        with torch.no_grad():
            for ids in batches:
                extra = {"decoder_input_ids": ids[:, :5]} if family == "t5" else {}
                output = model(input_ids=ids, **extra)
                out.append(output.logits if hasattr(output, "logits") else output.last_hidden_state)
        return out

    replay = BlockReplay(ModelLayout(model).blocks, max_bytes=10**8)
    with replay.recording():
        expected = run()
    assert replay.starts == [1, 2]
    for start in replay.starts:
        with replay.starting_at(start):
            assert all(torch.equal(a, b) for a, b in zip(run(), expected))


def test_structured_entries_equal_the_channels_removed_for_real(tiny, cache):
    """An ffn entry equals block 1's MLP rebuilt without the pruning step's lowest-scoring half of its channels;
    heads entries exist on attention groups only, and the profile leaves the weights intact."""
    import torch

    from executors import run_profile
    from executors.loading import load_model
    from executors.steps.layout import ModelLayout
    from executors.steps.structured import ffn_channel_scores

    p = run_profile(tiny, formats=(), sparsity=(("ffn", 0.5), ("heads", 0.5)), block_drop=False, samples=2,
                    seq_len=32).profile
    assert {(e.block, e.group, e.option) for e in p.entries} == {
        (b, g, o) for b in (0, 1) for g, o in (("mlp", "sparsity:ffn:0.5"), ("attention", "sparsity:heads:0.5"))}
    assert all(e.retained_pct != 100.0 for e in p.entries)
    loaded = load_model(tiny)
    model, tokenizer = loaded.model, loaded.tokenizer
    baseline = _perplexity(model, tokenizer)
    layout = ModelLayout(model)
    keep = torch.topk(ffn_channel_scores(layout, layout.block_prefix(1)), 64).indices.sort().values
    mlp = model.model.layers[1].mlp
    with torch.no_grad():
        for name in ("gate_proj", "up_proj"):
            old = getattr(mlp, name)
            new = torch.nn.Linear(64, 64, bias=False)
            new.weight.copy_(old.weight[keep])
            setattr(mlp, name, new)
        down = torch.nn.Linear(64, 64, bias=False)
        down.weight.copy_(mlp.down_proj.weight[:, keep])
        mlp.down_proj = down
    measured = 100 * baseline / _perplexity(model, tokenizer)
    assert p.effect(1, "mlp", "sparsity:ffn:0.5") == pytest.approx(measured, rel=1e-5)


def test_the_quantize_step_applies_per_block_formats(tiny):
    """block_formats (a profiled search's allocation) reach the modules: block 1's MLP in hqq-int4, the rest int8;
    after whole-layer pruning the overrides still address the original block numbers."""
    from executors.loading import load_model
    from executors.steps.context import StepContext
    from executors.steps.quantize import quantize
    from planner.strategy import CompressionStrategy

    strategy = CompressionStrategy.model_validate({"quantization": {
        "weights": "int8", "compute_dtype": "fp32", "block_formats": [{"block": 1, "group": "mlp", "format": "hqq-int4"}]}})
    model = load_model(tiny).model
    _, report = quantize(model, strategy.quantization, StepContext(), strategy)
    actions = {m.name: m.action for m in report.modules}
    assert {n: a for n, a in actions.items() if "layers.1.mlp" in n} == {
        f"model.layers.1.mlp.{p}": "hqq-int4" for p in ("gate_proj", "up_proj", "down_proj")}
    assert {a for n, a in actions.items() if "layers.1.mlp" not in n} == {"int8"}
    model = load_model(tiny).model
    del model.model.layers[0]  # block 1 is now the first block of the model
    model.config.num_hidden_layers = 1
    _, report = quantize(model, strategy.quantization, StepContext(kept_layers=[1]), strategy)
    assert {m.name: m.action for m in report.modules}["model.layers.0.mlp.down_proj"] == "hqq-int4"


def test_the_pruning_step_applies_per_block_levels(tiny):
    """block_levels reach the modules: block 1's MLP at 0.25, block 0's attention dense, the rest at 0.5; the
    step's target is the size-weighted mean; after whole-layer pruning they address the original blocks."""
    import torch

    from executors.loading import load_model
    from executors.steps.context import StepContext
    from executors.steps.prune import prune
    from planner.strategy import CompressionStrategy

    strategy = CompressionStrategy.model_validate({"sparsity": {"level": 0.5, "block_levels": [
        {"block": 1, "group": "mlp", "level": 0.25}, {"block": 0, "group": "attention", "level": 0.0}]}})
    model = load_model(tiny).model
    _, report = prune(model, strategy.sparsity, StepContext(), strategy)
    share = {n: float((m.weight == 0).float().mean()) for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and ".layers." in n}
    for name, zeros in share.items():
        want = 0.0 if "layers.0.self_attn" in name else 0.25 if "layers.1.mlp" in name else 0.5
        assert zeros == pytest.approx(want, abs=1e-3), name
    assert {s.name for s in report.skipped if "block_levels" in s.reason} == {
        f"model.layers.0.self_attn.{p}_proj" for p in "qkvo"}
    sizes = {n: m.weight.numel() for n, m in model.named_modules() if n in share and "layers.0.self_attn" not in n}
    expected = sum(sizes[n] * (0.25 if "layers.1.mlp" in n else 0.5) for n in sizes) / sum(sizes.values())
    assert report.metrics["sparsity_achieved"] == pytest.approx(expected, abs=1e-3)
    model = load_model(tiny).model
    del model.model.layers[0]  # block 1 is now the first block of the model
    model.config.num_hidden_layers = 1
    prune(model, strategy.sparsity, StepContext(kept_layers=[1]), strategy)
    assert float((model.model.layers[0].mlp.down_proj.weight == 0).float().mean()) == pytest.approx(0.25, abs=1e-3)
    assert float((model.model.layers[0].self_attn.q_proj.weight == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)


def test_block_levels_refuse_a_global_ranking():
    from planner.strategy import SparsitySpec

    with pytest.raises(ValueError, match="scope='per-layer'"):
        SparsitySpec(level=0.5, scope="global", block_levels=[{"block": 0, "group": "mlp", "level": 0.25}])


def test_load_time_quantization_and_the_memory_model_see_per_block_formats():
    from planner.execution import group_format, load_time_format
    from planner.strategy import QuantizationSpec

    spec = QuantizationSpec(weights="nf4", block_formats=[{"block": 2, "group": "attention", "format": "int8"}])
    assert load_time_format(spec) is None  # bitsandbytes at load time would put every block in nf4
    assert load_time_format(QuantizationSpec(weights="nf4")) == "nf4"
    assert group_format(spec, "attention", "linear", 2, 4) == "int8"
    assert group_format(spec, "mlp", "linear", 2, 4) == "nf4"
    assert group_format(spec, "attention", "linear", 1, 4) == "nf4"


def test_a_run_with_whole_layer_pruning_quantizes_the_kept_blocks_by_their_original_number(tiny, tmp_path):
    import executors

    strategy = {"sparsity": {"level": 0.5, "pattern": "layers"},
                "quantization": {"weights": "int8", "compute_dtype": "fp32",
                                 "block_formats": [{"block": 1, "group": "mlp", "format": "hqq-int4"}]}}
    result = executors.execute(tiny, strategy, isolate=False, speed=False, out_dir=tmp_path)
    assert result.status == "ok", result.reason
    pruning, quantization = result.steps
    kept = pruning["structure"]["kept_layers"]
    assert len(kept) == 1
    actions = {m["name"]: m["action"] for m in quantization["modules"]}
    assert actions["model.layers.0.mlp.down_proj"] == ("hqq-int4" if kept == [1] else "int8")
    assert actions["model.layers.0.self_attn.o_proj"] == "int8"


@pytest.fixture(scope="module")
def tiny4(tmp_path_factory):
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-4"), layers=4)


def test_whole_layer_pruning_keeps_what_kept_by_influence_picks_ties_included(tiny4, monkeypatch):
    """Blocks 1-3 equally influential, two kept: the lower indices 1 and 2 (planner.models.derive's rule;
    torch.topk would keep 2 and 3)."""
    import torch

    from executors.candidate import _training_batches
    from executors.loading import load_model
    from executors.steps import prune as prune_step
    from executors.steps.context import StepContext
    from planner.strategy import CompressionStrategy, SparsitySpec

    monkeypatch.setattr(prune_step, "block_influence", lambda *_: torch.tensor([0.2, 0.5, 0.5, 0.5]))
    loaded = load_model(tiny4)
    strategy = CompressionStrategy(sparsity=SparsitySpec(level=0.5, pattern="layers"))
    context = StepContext(batches=_training_batches(loaded.tokenizer, None, 0))
    model, report = prune_step.prune(loaded.model, strategy.sparsity, context, strategy)
    assert report.structure["kept_layers"] == [1, 2] and context.kept_layers == [1, 2]
    assert len(model.model.layers) == 2


def test_the_profile_records_the_influence_the_pruning_step_computes(tiny4, cache, tmp_path):
    """The profile's influence is the pruning step's on the same calibration batches, so the blocks the planner
    predicts a run keeps are the blocks the run keeps."""
    import executors
    from executors import run_profile
    from executors.candidate import _training_batches
    from executors.loading import load_model
    from executors.steps.context import StepContext
    from executors.steps.layout import ModelLayout
    from executors.steps.structured import block_influence
    from planner.models.derive import kept_by_influence

    found = run_profile(tiny4, formats=[], sparsity=[], samples=2, seq_len=32).profile
    influence = found.block_influence()
    assert influence is not None and len(influence) == 4 and len(set(influence)) == 4
    loaded = load_model(tiny4)
    batches = StepContext(batches=_training_batches(loaded.tokenizer, None, 0)).calibration("whole-layer pruning")
    by_hand = block_influence(loaded.model, ModelLayout(loaded.model), batches, "cpu").tolist()
    assert influence == pytest.approx(by_hand, rel=1e-5)
    for level in (0.25, 0.5, 0.75):
        strategy = {"sparsity": {"level": level, "pattern": "layers"}}
        result = executors.execute(tiny4, strategy, isolate=False, speed=False, out_dir=tmp_path / str(level))
        assert result.status == "ok", result.reason
        kept = result.steps[0]["structure"]["kept_layers"]
        assert kept == kept_by_influence(influence, len(kept))
