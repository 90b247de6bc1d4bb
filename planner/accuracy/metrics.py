"""Metric families mapped to one "quality retained" scale.

The accuracy model works with a latent damage ``d >= 0`` in log-perplexity units,
``d = ln(ppl_compressed / ppl_baseline)``. A metric family ``m`` shows it as

    retained_pct = 100 * exp(-scale[m] * d)

with ``scale`` from ``planner/data/accuracy_priors.toml`` ``[metrics]``:

- ``perplexity`` (scale 1): retained = baseline_ppl / compressed_ppl, as the executors report it;
- ``accuracy`` (scale 0.29): retained = compressed / baseline task or classification accuracy. The
  factor is the ratio of log-losses of the same GGUF formats on a task average and on perplexity
  (source in the data file): a model that loses 10% of its perplexity keeps ~97% of its accuracy;
- ``embedding`` (scale 0.29, no published anchor): mean cosine / neighbour agreement with the
  uncompressed model's embeddings.

``accuracy`` is the default everywhere, so the user's ``max_accuracy_loss`` (%) means "percent of the
uncompressed model's task accuracy" whatever the evaluator; a prediction for another family is the
same damage shown on that family's scale.
"""

from __future__ import annotations

import math
from typing import Literal

MetricFamily = Literal["accuracy", "perplexity", "embedding"]
METRIC_FAMILIES: tuple[str, ...] = ("accuracy", "perplexity", "embedding")
DAMAGE_FLOOR = 1e-4
"""Smallest damage used in log space: a measured 'no loss' (or a gain) counts as 99.99% retained."""


def metric_scale(metric: str) -> float:
    from planner.accuracy.priors import load_priors

    return load_priors().metric_scale(check_metric(metric))


def check_metric(metric: str) -> str:
    key = metric_family(metric) if isinstance(metric, str) else None
    if key is None:
        from hardware_db.names import did_you_mean
        from planner.errors import InvalidRequestError

        raise InvalidRequestError(f"unknown metric family {metric!r}.{did_you_mean(metric, METRIC_FAMILIES)} "
                         f"Allowed: {', '.join(METRIC_FAMILIES)}.")
    return key


def metric_family(metric: str) -> str | None:
    """Family of a metric name as evaluators write it ('perplexity', 'classification accuracy',
    'mean cosine to the uncompressed model', ...) or of an executors' evaluator name ('fidelity': the
    output cosine to the uncompressed model, the embedding family); None if it cannot be told."""
    text = metric.strip().lower()
    if text in METRIC_FAMILIES:
        return text
    if "perplex" in text or text in ("ppl", "loss", "nll"):
        return "perplexity"
    if "cosine" in text or "embedding" in text or "neighbour" in text or "neighbor" in text or "fidelity" in text:
        return "embedding"
    if "accuracy" in text or text in ("acc", "f1", "exact match", "mmlu", "em"):
        return "accuracy"
    return None


def damage_from_retained(retained_pct: float, scale: float) -> float:
    """Latent damage of a retained % on a metric of this scale (floored, see DAMAGE_FLOOR)."""
    if not math.isfinite(retained_pct) or retained_pct <= 0:
        raise ValueError(f"retained % must be a positive finite number, got {retained_pct!r}.")
    return max(-math.log(retained_pct / 100.0) / scale, DAMAGE_FLOOR)


def retained_from_damage(damage: float, scale: float) -> float:
    return 100.0 * math.exp(-scale * damage)
