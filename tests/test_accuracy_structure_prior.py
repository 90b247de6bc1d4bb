"""The structure prior (students, heads / FFN / layer removal) stays sensible outside its cited rows:
no damage as the removed share vanishes, monotone in the removed share, bounded damage, and models
smaller or larger than any cited row predicted at the edge of the rows with a wider interval."""

from __future__ import annotations

import math

import pytest

from planner.accuracy.priors import (Z80, load_priors, saturate, structure_features,
                                     structure_recovery_log_factor)

PRIORS = load_priors()
RULE = PRIORS.rules["structure"]
D_MAX = PRIORS.data.techniques["structure"].saturation.max_damage
STRUCTURE_ROWS = [r for r in PRIORS.data.rows if r.technique == "structure" and r.kind == "point" and r.fit]


def predict(kept: float, tokens: float = 0.0, params: float = 7e9) -> tuple[float, float]:
    return RULE.predict_log(structure_features(kept, tokens, params, PRIORS.data))


def retained_ppl(mu: float) -> float:
    return 100 * math.exp(-math.exp(mu))


def test_no_damage_as_the_removed_share_vanishes():
    assert retained_ppl(predict(1 - 1e-6)[0]) > 99.99
    assert retained_ppl(predict(0.99)[0]) > 98.0


@pytest.mark.parametrize("params", [4e6, 110e6, 7e9, 70e9])
@pytest.mark.parametrize("tokens_per_param", [0.0, 1.0, 30.0])
def test_damage_grows_with_the_removed_share(params, tokens_per_param):
    medians = [predict(k, tokens_per_param * params, params)[0] for k in (0.99, 0.9, 0.75, 0.5, 0.25, 0.05)]
    assert all(a < b for a, b in zip(medians, medians[1:])), medians


def test_removed_slope_stays_positive_in_every_leave_one_out_refit():
    """The rule is monotone in the removed share (positive ``removed`` and ``collapse``) and training never
    adds damage (negative ``recovery``), whichever row is held out."""
    for held in STRUCTURE_ROWS + [None]:
        c = PRIORS.with_rows([r for r in PRIORS.data.rows if r is not held]).rules["structure"].coefficients()
        assert c["removed"] > 0.3 and c["collapse"] > 0.3 and c["recovery"] < 0, (held and held.id, c)


def test_one_shot_removal_of_most_blocks_collapses_but_a_trained_student_does_not():
    """Without training, removing 90% of a 7B model's blocks loses most of its quality (r / (1 - r));
    a student keeping 10% after 30 tokens per parameter of distillation keeps most of it."""
    assert retained_ppl(predict(0.1)[0]) < 10
    assert retained_ppl(predict(0.1, 30 * 7e9)[0]) > 80


def test_damage_is_bounded():
    mu, s = predict(1e-3)  # 99.9% of the blocks removed, no training
    assert math.exp(mu) < D_MAX
    assert retained_ppl(mu) >= 100 * math.exp(-D_MAX) - 1e-9


def test_saturation_map():
    """d = 1 / (1/d_lin + 1/D): identity for small damage, D at most; the optimistic 80% end is the
    exact image of the linear one."""
    centre, spread = saturate(math.log(1e-3), 0.5, D_MAX)
    assert math.exp(centre) == pytest.approx(1e-3, rel=1e-3)
    centre, spread = saturate(math.log(1e4), 1.0, D_MAX)
    assert math.exp(centre) < D_MAX
    low_image = -math.log(math.exp(-(math.log(1e4) - Z80)) + 1 / D_MAX)
    assert centre - Z80 * spread == pytest.approx(low_image)


def test_smaller_models_than_any_row_are_predicted_at_the_edge_with_a_wider_interval():
    """The cited rows span 110M-70B parameters: a 4M-parameter model gets the 110M median (not the
    ~1e-42 % retained of an extrapolated size term) and a wider interval; same above 70B."""
    smallest = min(r.params for r in STRUCTURE_ROWS)
    largest = max(r.params for r in STRUCTURE_ROWS)
    edge_mu, edge_s = predict(0.8, 0.0, smallest)
    tiny_mu, tiny_s = predict(0.8, 0.0, 4e6)
    assert tiny_mu == pytest.approx(edge_mu) and tiny_s > edge_s
    assert retained_ppl(tiny_mu) > 1.0
    assert RULE.extrapolated(structure_features(0.8, 0.0, 4e6, PRIORS.data)) == ("size",)
    big_mu, big_s = predict(0.8, 0.0, 1e12)
    assert big_mu == pytest.approx(predict(0.8, 0.0, largest)[0]) and big_s > predict(0.8, 0.0, largest)[1]


def test_more_training_than_any_row_is_held_at_the_edge():
    """Beyond the most training any row cites, the recovery term stays at the edge (no further gain
    from it) and the interval widens; more training never adds damage."""
    params = 7e9
    most = max(math.log1p(float(r.setting.get("recovery_tokens", 0)) / r.params) for r in STRUCTURE_ROWS)
    at_edge = math.expm1(most) * params
    kept = 1 - 1e-6  # nothing removed: only the recovery term moves
    features = structure_features(kept, 100 * at_edge, params, PRIORS.data)
    assert RULE.extrapolated(features) == ("recovery",)
    assert RULE.predict_log(features)[0] == pytest.approx(predict(kept, at_edge, params)[0], abs=1e-4)
    assert RULE.predict_log(features)[1] > predict(kept, at_edge, params)[1]
    for kept in (0.9, 0.5, 0.1):
        assert predict(kept, 100 * at_edge, params)[0] <= predict(kept, at_edge, params)[0] + 1e-12
    assert predict(0.75, at_edge, params)[0] < predict(0.75, 0.0, params)[0]


def test_recovery_log_factor_is_the_rules_own():
    """The factor training applies to a one-shot damage equals the rule's own difference (below the
    saturation, where the rule is log-linear)."""
    params, kept, tokens = 7e9, 0.75, 1e9
    factor = structure_recovery_log_factor(kept, tokens, params, PRIORS)
    x1 = structure_features(kept, tokens, params, PRIORS.data)
    x0 = structure_features(kept, 0.0, params, PRIORS.data)
    assert factor == pytest.approx(sum(c * (a - b) for c, a, b in zip(RULE.coef, x1, x0)))
    assert factor < 0
    assert structure_recovery_log_factor(kept, 0.0, params, PRIORS) == 0.0


def test_unfitted_row_of_the_same_pruned_model_is_inside_the_interval():
    """LLM-Pruner's PTB perplexity of the same pruned LLaMA-7B is not fitted (the WikiText-2 row is):
    the rule predicts it within its 80% interval."""
    row = next(r for r in PRIORS.data.rows if r.id == "llmpruner-llama7b-20pct-notune-ptb")
    assert not row.fit
    predicted, low, high = PRIORS.predict_row(row)
    assert low <= row.cited_retained_pct <= high


def test_no_training_rows_are_cited_for_structure():
    """The one-shot end is anchored by a cited row without recovery training, not by the prior alone."""
    assert any(float(r.setting.get("recovery_tokens", 0)) == 0 for r in STRUCTURE_ROWS)


def test_a_clamp_on_an_unknown_coefficient_is_refused():
    from planner.accuracy.priors import _validate
    from planner.errors import InvalidConfigError
    from planner._data import read_data_toml

    raw = read_data_toml("accuracy_priors.toml", 1)
    raw["techniques"]["structure"]["clamp"] = {"sise": "both"}
    with pytest.raises(InvalidConfigError, match="sise.*allowed: intercept, removed, recovery, size, collapse"):
        _validate(raw)
