"""planner.accuracy public interface: prediction shape, basis, profile and calibration plumbing."""

from __future__ import annotations

import json
import math

import pytest

from planner.accuracy import (CalibrationRecord, CalibrationStore, QualityPrediction, SensitivityProfile,
                              model_fingerprint, predict_quality)
from planner.errors import InvalidConfigError
from planner.models import get_model
from planner.strategy import CompressionStrategy, QuantizationSpec, SparsitySpec


@pytest.fixture(scope="module")
def llama8b():
    return get_model("meta-llama/Llama-3.1-8B")


def quant(fmt: str, **kw) -> CompressionStrategy:
    return CompressionStrategy(quantization=QuantizationSpec(weights=fmt, **kw))


def test_identity_is_exact(llama8b):
    p = predict_quality(llama8b, CompressionStrategy())
    assert (p.retained_pct, p.low_pct, p.high_pct, p.loss_pct) == (100.0, 100.0, 100.0, 0.0)


def test_prediction_is_typed_and_ordered(llama8b):
    p = predict_quality(llama8b, quant("nf4"))
    assert isinstance(p, QualityPrediction)
    assert p.basis == "prior" and p.n_measurements > 10
    assert p.low_pct < p.retained_pct < p.high_pct <= 100.0
    assert p.loss_pct == pytest.approx(100 - p.retained_pct)
    assert [part.technique for part in p.parts] == ["quantization"]


def test_fewer_bits_lose_more(llama8b):
    r = {f: predict_quality(llama8b, quant(f)).retained_pct for f in ("fp16", "int8", "nf4", "gptq-int4")}
    assert r["fp16"] == 100.0
    assert r["int8"] > r["nf4"] and r["int8"] > r["gptq-int4"]
    assert r["int8"] > 99.0


def test_metric_families_share_one_damage(llama8b):
    acc = predict_quality(llama8b, quant("nf4"), metric="accuracy")
    ppl = predict_quality(llama8b, quant("nf4"), metric="perplexity")
    assert ppl.retained_pct < acc.retained_pct  # perplexity shows the same damage more strongly
    with pytest.raises(ValueError, match="Allowed"):
        predict_quality(llama8b, quant("nf4"), metric="bleu")


def _profile(spec, retained: float, option: str = "nf4", name: str | None = None) -> SensitivityProfile:
    entries = [{"block": b, "group": g, "option": option, "retained_pct": retained, "seconds": 1.0}
               for b in range(spec.num_layers) for g in ("attention", "mlp")]
    return SensitivityProfile.model_validate({
        "model": {"name": name or spec.name, "family": spec.model_type, "num_blocks": spec.num_layers,
                  "fingerprint": None if name else model_fingerprint(spec.config)},
        "evaluator": {"name": "perplexity", "metric": "perplexity", "metric_family": "perplexity"},
        "entries": entries})


def test_profile_basis_and_round_trip(llama8b, tmp_path):
    profile = _profile(llama8b, 99.9)
    path = profile.save(tmp_path / "p.json")
    with pytest.raises(FileExistsError):
        profile.save(path)
    loaded = SensitivityProfile.load(path)
    assert loaded == profile
    p = predict_quality(llama8b, quant("nf4"), profile=loaded)
    assert p.basis == "profile" and p.n_measurements == 2 * llama8b.num_layers
    # 64 entries at 99.9% perplexity each: sum of damages 64 * 0.001 = 0.064 -> accuracy exp(-0.29 * 0.064)
    assert p.retained_pct == pytest.approx(100 * (0.999 ** 64) ** 0.29, rel=1e-3)


def test_structured_pruning_from_the_profile(llama8b):
    """ffn pruning sums the profile's per-block ffn entries of the MLP groups (heads: of the attention groups);
    a level the profile did not measure comes from the priors (noted)."""
    entries = [{"block": b, "group": g, "option": o, "retained_pct": r}
               for b in range(llama8b.num_layers)
               for g, o, r in (("mlp", "sparsity:ffn:0.25", 99.5), ("attention", "sparsity:heads:0.25", 99.0))]
    profile = SensitivityProfile.model_validate({**_profile(llama8b, 99.9).model_dump(), "entries": entries})
    ffn = CompressionStrategy(sparsity=SparsitySpec(level=0.25, pattern="ffn"))
    p = predict_quality(llama8b, ffn, profile=profile, metric="perplexity")
    assert p.basis == "profile" and [part.technique for part in p.parts] == ["structure"]
    assert p.retained_pct == pytest.approx(100 * 0.995 ** llama8b.num_layers, rel=1e-6)
    heads = predict_quality(llama8b, CompressionStrategy(sparsity=SparsitySpec(level=0.25, pattern="heads")),
                            profile=profile, metric="perplexity")
    assert heads.retained_pct == pytest.approx(100 * 0.99 ** llama8b.num_layers, rel=1e-6)
    other = predict_quality(llama8b, CompressionStrategy(sparsity=SparsitySpec(level=0.5, pattern="ffn")),
                            profile=profile, metric="perplexity")
    assert other.basis == "prior" and any("no complete sparsity:ffn:0.5" in n for n in other.notes)


def test_an_options_whole_model_entry_scales_its_summed_effects(llama8b):
    """Per-group effects that do not add up: the whole-model entry is what a uniform strategy gets, and a
    strategy using the option on half the groups the second-order interpolation (planner.accuracy.profile)."""
    import math

    n = llama8b.num_layers
    data = {**_profile(llama8b, 99.9).model_dump(), "whole": [{"option": "nf4", "retained_pct": 90.0}]}
    profile = SensitivityProfile.model_validate(data)
    kappa, total = profile.additivity("nf4", 1.0)
    assert total == pytest.approx(-2 * n * math.log(0.999)) and kappa == pytest.approx(-math.log(0.9) / total)
    uniform = predict_quality(llama8b, quant("nf4"), profile=profile, metric="perplexity")
    assert uniform.retained_pct == pytest.approx(90.0, rel=1e-9)
    half = quant("nf4", block_formats=[{"block": b, "group": "mlp", "format": "bf16"} for b in range(n)])
    # second order: half the summed damage, S (1 + (kappa - 1) / 2)
    expected = 100 * math.exp(-total / 2 * (1 + (kappa - 1) / 2))
    assert predict_quality(llama8b, half, profile=profile, metric="perplexity").retained_pct == pytest.approx(
        expected, rel=1e-9)


def test_groups_that_measured_a_gain_lift_the_intervals_upper_end_only(llama8b):
    """A profile group can measure above 100%. The point prediction floors it at no damage; the interval's
    upper end counts the gains of the groups used, each option's scaled by 1 - share (a uniform strategy's
    whole-model entry already measured what they add up to)."""
    import math

    n = llama8b.num_layers
    entries = [{"block": b, "group": g, "option": "nf4", "retained_pct": 100.1 if b < 4 else 99.0}
               for b in range(n) for g in ("attention", "mlp")]
    data = {**_profile(llama8b, 99.9).model_dump(), "entries": entries,
            "whole": [{"option": "nf4", "retained_pct": 60.0}]}
    profile = SensitivityProfile.model_validate(data)
    no_gain = SensitivityProfile.model_validate({**data, "entries": [
        {**e, "retained_pct": min(e["retained_pct"], 100.0)} for e in entries]})
    # nf4 on the eight gaining groups only: damage floored at zero, gain 8 * ln(1.001) (share 0)
    gaining = quant("bf16", block_formats=[{"block": b, "group": g, "format": "nf4"}
                                           for b in range(4) for g in ("attention", "mlp")])
    p = predict_quality(llama8b, gaining, profile=profile, metric="perplexity")
    q = predict_quality(llama8b, gaining, profile=no_gain, metric="perplexity")
    assert p.retained_pct == q.retained_pct and p.low_pct == q.low_pct
    assert q.high_pct <= 100.0 < p.high_pct
    assert p.high_pct == pytest.approx(q.high_pct * 1.001 ** 8, rel=1e-9)
    assert p.parts[0].high_pct == pytest.approx(p.high_pct, rel=1e-9)
    # uniform: share 1, no gain; the whole-model entry is the prediction
    uniform = predict_quality(llama8b, quant("nf4"), profile=profile, metric="perplexity")
    assert uniform.retained_pct == pytest.approx(60.0, rel=1e-9)
    assert uniform.high_pct == predict_quality(llama8b, quant("nf4"), profile=no_gain, metric="perplexity").high_pct
    # half the damaging groups too: the gain scaled by 1 - their share of the option's damage
    half = quant("bf16", block_formats=[{"block": b, "group": g, "format": "nf4"}
                                        for b in range(4 + (n - 4) // 2) for g in ("attention", "mlp")])
    share = ((n - 4) // 2) / (n - 4)
    with_gain = predict_quality(llama8b, half, profile=profile, metric="perplexity").high_pct
    without = predict_quality(llama8b, half, profile=no_gain, metric="perplexity").high_pct
    assert math.log(with_gain / without) == pytest.approx(8 * math.log(1.001) * (1 - share), rel=1e-9)


def test_a_lossless_profile_part_does_not_erase_another_parts_damage(llama8b):
    """A near-zero profile part stacked on a damaging one: the total keeps the damage (a run's resolution
    widens the interval additively, not the lossless part's log-spread, which made the combination's
    moment matching return ~100%: the tiny LM's hqq-int8 + 0.5 FFN, measured 95.5%, was predicted 99.85%)."""
    n = llama8b.num_layers
    entries = [{"block": b, "group": g, "option": o, "retained_pct": r} for b in range(n)
               for g, o, r in (("attention", "nf4", 100.0), ("mlp", "nf4", 100.0), ("mlp", "sparsity:ffn:0.25", 99.9))]
    profile = SensitivityProfile.model_validate({**_profile(llama8b, 99.9).model_dump(), "entries": entries})
    ffn = SparsitySpec(level=0.25, pattern="ffn")
    alone = predict_quality(llama8b, CompressionStrategy(sparsity=ffn), profile=profile, metric="perplexity")
    both = predict_quality(llama8b, CompressionStrategy(sparsity=ffn, quantization=QuantizationSpec(weights="nf4")),
                           profile=profile, metric="perplexity")
    assert alone.retained_pct == pytest.approx(100 * 0.999 ** n, rel=1e-6)
    assert both.retained_pct == pytest.approx(alone.retained_pct, abs=0.05)
    assert both.low_pct < alone.retained_pct < both.high_pct
    nf4 = next(p for p in both.parts if p.technique == "quantization")
    assert nf4.retained_pct > 99.99 and nf4.low_pct < 99.9  # lossless, within a run's resolution


def test_profile_of_other_model_is_not_applied(llama8b):
    p = predict_quality(llama8b, quant("nf4"), profile=_profile(llama8b, 50.0, name="other/model"))
    assert p.basis == "prior" and any("not applied" in n for n in p.notes)


def test_bad_profile_file_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "fitplan.sensitivity_profile", "model": {"name": "x"}}))
    with pytest.raises(InvalidConfigError, match="bad.json"):
        SensitivityProfile.load(bad)
    with pytest.raises(InvalidConfigError, match="not a fitplan sensitivity profile"):
        (tmp_path / "x.json").write_text("[]")
        SensitivityProfile.load(tmp_path / "x.json")


def _record(family: str, measured: float, predicted: float, fmt: str = "nf4") -> CalibrationRecord:
    return CalibrationRecord(strategy=json.loads(quant(fmt).to_json()), model_name="m", family=family,
                             evaluator="perplexity", metric="perplexity", metric_family="perplexity",
                             measured_retained_pct=measured, predicted_retained_pct=predicted, source="test")


def test_calibration_corrects_its_family_only(llama8b, tmp_path):
    store = CalibrationStore([], tmp_path)
    for measured in (90.0, 91.0, 89.0, 90.5):  # measured much worse than predicted 99%
        store.append(_record("llama", measured, 99.0))
    assert len(CalibrationStore.load(tmp_path)) == 4
    prior = predict_quality(llama8b, quant("nf4"))
    calibrated = predict_quality(llama8b, quant("nf4"), calibration=CalibrationStore.load(tmp_path))
    assert calibrated.basis == "calibrated" and calibrated.n_measurements == 4
    assert calibrated.retained_pct < prior.retained_pct
    tiny = CalibrationStore([_record("llama", 50.0, 99.0).model_copy(update={"params": 4_000_000})])
    p = predict_quality(llama8b, quant("nf4"), calibration=tiny)
    assert p.basis == "prior" and any("8x smaller or larger" in n for n in p.notes)
    # a stacked record informs each of its techniques (joint fit on the sum, see planner.accuracy.residual)
    stacked = _record("llama", 50.0, 99.0).model_copy(update={"strategy": json.loads(CompressionStrategy(
        quantization=QuantizationSpec(weights="nf4"), sparsity=SparsitySpec(level=0.5)).to_json())})
    assert stacked.techniques == ("quantization", "sparsity")
    p = predict_quality(llama8b, quant("nf4"), calibration=CalibrationStore([stacked]))
    assert p.basis == "calibrated" and p.n_measurements == 1 and p.retained_pct < prior.retained_pct
    other = CalibrationStore([_record("qwen3", 50.0, 99.0)])
    p = predict_quality(llama8b, quant("nf4"), calibration=other)
    assert p.basis == "prior" and any("never applied" in n and "qwen3" in n for n in p.notes)


def test_bad_inputs_are_one_clear_error(llama8b):
    from planner.errors import FitplanError

    for kwargs, match in (({"training_tokens": float("nan")}, "training_tokens"),
                          ({"training_tokens": -1.0}, "training_tokens"),
                          ({"metric": "bleu"}, "Allowed: accuracy")):
        with pytest.raises(FitplanError, match=match):
            predict_quality(llama8b, quant("nf4"), **kwargs)
    with pytest.raises(FitplanError, match="CompressionStrategy"):
        predict_quality(llama8b, {"quantization": {"weights": "nf4"}})
    assert predict_quality("meta-llama/Llama-3.1-8B", quant("nf4")) == predict_quality(llama8b, quant("nf4"))


def test_format_without_specific_prior_falls_back_on_bits_and_group(llama8b):
    from planner.accuracy.parts import format_damage, model_facts
    from planner.accuracy.priors import Priors, load_priors

    priors = load_priors()
    formats = dict(priors.data.quantization["formats"])
    del formats["nvfp4"]
    stripped = Priors(priors.data.model_copy(update={"quantization": {**priors.data.quantization,
                                                                       "formats": formats}}), priors.rules)
    notes: list[str] = []
    fallback = format_damage("nvfp4", model_facts(llama8b, stripped), stripped, notes)
    assert fallback is not None and notes and "no specific prior" in notes[0] and "group size 16" in notes[0]
    # 4 bits in groups of 16 = 4.75 quality bits, round-to-nearest: the rule's own value at those features
    from planner.accuracy.priors import quant_features

    facts = model_facts(llama8b, priors)
    mu, _ = priors.rules["quantization"].predict_log(
        quant_features(4.75, "rtn", facts.params, facts.tokens_per_param, priors.data))
    assert fallback.mu == pytest.approx(mu)


def test_named_student_uses_its_size(llama8b):
    from planner.strategy import DistillationSpec

    small = predict_quality(llama8b, CompressionStrategy(distillation=DistillationSpec(student="meta-llama/Llama-3.2-1B")))
    large = predict_quality(llama8b, CompressionStrategy(distillation=DistillationSpec(student="meta-llama/Llama-3.2-3B")))
    assert small.retained_pct < large.retained_pct < 100


def _with_drops(spec, influence=None) -> SensitivityProfile:
    """A profile whose block b, removed alone, keeps 99.9 - 0.01 b % of the perplexity (and, optionally, the
    blocks' influence)."""
    drops = [{"block": b, "retained_pct": 99.9 - 0.01 * b, "seconds": 1.0,
              **({"influence": influence[b]} if influence is not None else {})} for b in range(spec.num_layers)]
    return SensitivityProfile.model_validate({**_profile(spec, 99.9).model_dump(), "block_drop": drops})


def test_layer_pruning_sums_the_drops_of_the_blocks_the_executors_influence_rule_removes(llama8b):
    from planner.models.derive import evenly_spaced_kept_layers, kept_by_influence

    n = llama8b.num_layers
    influence = [0.01 * ((7 * b) % n) for b in range(n)]  # a scrambled order, not evenly spaced
    layers = CompressionStrategy(sparsity=SparsitySpec(level=0.25, pattern="layers"))
    kept = kept_by_influence(influence, n - 8)
    assert kept != evenly_spaced_kept_layers(n, n - 8)

    def expected(kept_blocks):
        return 100 * math.prod((99.9 - 0.01 * b) / 100 for b in range(n) if b not in kept_blocks)

    p = predict_quality(llama8b, layers, profile=_with_drops(llama8b, influence), metric="perplexity")
    assert p.basis == "profile" and [part.technique for part in p.parts] == ["structure"]
    assert p.retained_pct == pytest.approx(expected(kept), rel=1e-9)
    assert any("influence rule picks them (profile)" in note for note in p.notes)
    old = predict_quality(llama8b, layers, profile=_with_drops(llama8b), metric="perplexity")  # no influence
    assert old.retained_pct == pytest.approx(expected(evenly_spaced_kept_layers(n, n - 8)), rel=1e-9)
    assert any("assumed evenly spaced: no profile influence" in note for note in old.notes)
    assert old.retained_pct != pytest.approx(p.retained_pct, rel=1e-9)
    gradual = layers.model_copy(update={"sparsity": layers.sparsity.model_copy(update={"gradual_steps": 2})})
    notes = predict_quality(llama8b, gradual, profile=_with_drops(llama8b, influence), metric="perplexity").notes
    assert any("approximate" in note for note in notes)


def test_a_profile_with_influence_round_trips_and_an_old_one_loads(llama8b, tmp_path):
    influence = [0.5 + 0.001 * b for b in range(llama8b.num_layers)]
    profile = _with_drops(llama8b, influence)
    loaded = SensitivityProfile.load(profile.save(tmp_path / "new.json"))
    assert loaded == profile and loaded.block_influence() == influence
    old = json.loads((tmp_path / "new.json").read_text())
    for drop in old["block_drop"]:
        del drop["influence"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert SensitivityProfile.load(tmp_path / "old.json").block_influence() is None
    partial = {**old, "block_drop": old["block_drop"][:-1] + [{**old["block_drop"][-1], "influence": 0.3}]}
    assert SensitivityProfile.model_validate(partial).block_influence() is None  # all blocks or none


def test_after_layer_pruning_keep_first_and_last_apply_to_the_blocks_that_remain(llama8b):
    """As executors/steps/quantize.py applies them: the first and last of the 24 blocks left (wherever they
    were), so 22 blocks x 2 groups come from the profile's nf4 entries."""
    n = llama8b.num_layers
    influence = [0.01 * ((7 * b) % n) for b in range(n)]  # block 0 goes, block 31 stays
    strategy = CompressionStrategy(sparsity=SparsitySpec(level=0.25, pattern="layers"), quantization=QuantizationSpec(
        weights="nf4", keep_first_layers=1, keep_last_layers=1, keep_format="bf16"))
    p = predict_quality(llama8b, strategy, profile=_with_drops(llama8b, influence), metric="perplexity")
    assert {part.technique: part.n_measurements for part in p.parts} == {"structure": 8, "quantization": 2 * 22}
