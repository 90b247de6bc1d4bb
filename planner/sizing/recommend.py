"""Which fitting format ``fits`` recommends for a model on a GPU: the documented rule.

Among the formats of a model that fit and are not known to be unsupported:
0. on a device whose support is unknown (a capacity-only GPU), formats that need a recent hardware
   feature (bf16/fp8/fp4 units, or a compute capability above ``BASELINE_CC``) come after the others;
1. those that leave at least ``HEADROOM_PCT`` % of the usable memory free come first (if none does,
   the ones that fit at all);
1b. formats predicted more than ``SLOW_FACTOR`` x slower than the model's fastest fitting format
   (e.g. bitsandbytes int8 in transformers) come last;
2. then the lowest typical quality loss (``planner/data/format_quality.toml``: published perplexity
   increase of each format, a source per figure), in bands of ``LOSS_BAND_PCT`` percentage points
   (formats without a published figure rank after every format with one);
3. ties (same band) go to the fastest predicted decode (``decode_tok_s``; unknown speed last).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from planner._data import read_data_toml

HEADROOM_PCT = 10.0
LOSS_BAND_PCT = 0.5
SLOW_FACTOR = 3.0
BASELINE_CC = (7, 5)  # Turing (2018): what bitsandbytes, AWQ and GPTQ kernels need
RULE = (f"recommended = among supported formats that fit with >= {HEADROOM_PCT:.0f}% headroom and decode within "
        f"{SLOW_FACTOR:.0f}x of the fastest, the lowest typical quality loss (published ppl increase, "
        f"{LOSS_BAND_PCT}-point bands), ties to the fastest; where support is unknown, formats needing "
        "recent hardware (bf16/fp8/fp4) last")


@cache
def quality_loss() -> dict[str, tuple[float, str]]:
    """Format name -> (typical quality loss %, source)."""
    raw = read_data_toml("format_quality.toml", 1)["loss_pct"]
    return {name: (float(entry["value"]), str(entry["source"])) for name, entry in raw.items()}


def loss_of(formats: list[str] | tuple[str, ...]) -> np.ndarray:
    """Typical quality loss (%) of each format; NaN when no published figure."""
    table = quality_loss()
    return np.array([table[f][0] if f in table else np.nan for f in formats], dtype=float)


def needs_hardware(formats: list[str] | tuple[str, ...]) -> np.ndarray:
    """Whether each format needs a hardware feature (bf16, fp8, fp4 units or a compute capability)."""
    from planner.formats import get_format

    def recent(name: str) -> bool:
        fmt = get_format(name)
        cc = fmt.min_compute_capability
        return bool(fmt.requires_feature) or (cc is not None and tuple(map(int, str(cc).split("."))) > BASELINE_CC)

    return np.array([recent(f) for f in formats])


def recommended(group: np.ndarray, eligible: np.ndarray, headroom_pct: np.ndarray, loss_pct: np.ndarray,
                tok_s: np.ndarray, unsure: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask: the one recommended row of each ``group`` (e.g. a (GPU, model) code) among ``eligible``;
    ``unsure``: support unknown and the format needs a hardware feature (step 0 of the rule)."""
    band = np.where(np.isfinite(loss_pct), np.floor(loss_pct / LOSS_BAND_PCT), np.inf)
    speed = np.where(np.isfinite(tok_s), -tok_s, np.inf)
    roomy = np.nan_to_num(headroom_pct, nan=-np.inf) >= HEADROOM_PCT
    unsure = np.zeros(len(group), dtype=bool) if unsure is None else unsure
    codes, inverse = np.unique(group, return_inverse=True)
    fastest = np.full(len(codes), -np.inf)
    np.maximum.at(fastest, inverse, np.where(eligible & np.isfinite(tok_s), tok_s, -np.inf))
    slow = np.isfinite(tok_s) & (tok_s * SLOW_FACTOR < fastest[inverse])
    order = np.lexsort((speed, band, slow, ~roomy, unsure, ~eligible, group))
    first = np.ones(len(order), dtype=bool)
    first[1:] = group[order][1:] != group[order][:-1]
    mask = np.zeros(len(order), dtype=bool)
    mask[order[first]] = True
    return mask & eligible
