"""Published measurements transcribed into both data files: each is counted once in the totals.

``public_memory_measurements.csv`` (the first set) and ``published_memory_measurements_more.csv`` (the
second set) were transcribed separately, and two sources appear in both: the transformers docs 'Efficient
training on a single GPU' (bert-large on a V100) and the HF blog '4-bit ... QLoRA' T4 matrix. ``SAME``
names every first-set row that is a second-set row again; ``check_same`` proves each pair is one
measurement (same source document, model, batch, sequence length, setup words, and the same value or
fit/OOM outcome) and fails loudly when a pair does not match, so a wrong merge cannot happen silently.

The totals over both sets keep the second-set row (its locator pins the source revision) and drop the
first-set copy; the per-set tables are unchanged (no set holds a measurement twice). The benchmark prints
the merged pairs and the totals with the duplicates counted twice as well.
"""

from __future__ import annotations

import re

import pandas as pd

from planner.memory.result import GIB

# first-set id -> second-set id of the same published measurement
SAME: dict[str, str] = {
    # transformers docs perf_train_gpu_one, bert-large-uncased, V100-SXM2 16GB (nvidia-smi MiB)
    "HFT-02": "M-transformers_docs_perf_train-003",  # baseline fp32 AdamW, batch 4
    "HFT-03": "M-transformers_docs_perf_train-004",  # gradient accumulation, batch 1 x 4
    "HFT-04": "M-transformers_docs_perf_train-005",  # GA + gradient checkpointing
    "HFT-05": "M-transformers_docs_perf_train-006",  # fp16 mixed precision, batch 4
    "HFT-06": "M-transformers_docs_perf_train-008",  # Adafactor, batch 4
    "HFT-07": "M-transformers_docs_perf_train-010",  # bnb Adam8bit, batch 4
    "HFT-08": "M-transformers_docs_perf_train-011",  # GA + GC + fp16 + bnb Adam8bit
    # HF blog 4bit-transformers-bitsandbytes.md, T4 training matrix (fits / OOM)
    "BNB-01": "M-hf_blog_4bit_bitsandbytes__q-003",  # llama-7b NF4 bf16 CD no GC 512: fits
    "BNB-02": "M-hf_blog_4bit_bitsandbytes__q-005",  # llama-7b NF4 bf16 CD no GC 1024: OOM
    "BNB-03": "M-hf_blog_4bit_bitsandbytes__q-007",  # llama-7b NF4 bf16 CD GC 1024: fits
    "BNB-04": "M-hf_blog_4bit_bitsandbytes__q-002",  # llama-7b LLM.int8 GC 1024: OOM
    "BNB-05": "M-hf_blog_4bit_bitsandbytes__q-013",  # llama-13b NF4 fp16 CD GC 1024: OOM
    "BNB-06": "M-hf_blog_4bit_bitsandbytes__q-014",  # llama-13b NF4 fp16 CD GC + NQ 1024: fits
}

# Setup words that must agree between the two transcriptions of a pair (present in both or in neither).
_SETUP_WORDS = ("fp16", "nf4", "fp4", "int8", "nested|nq", "no grad ckpt|no gc", "adafactor", "adam8bit")


def _document(locator: str) -> str:
    match = re.search(r"([\w.\-]+\.md)", locator)
    return match.group(1) if match else locator


def _first_value(row: pd.Series) -> tuple[str, float | None]:
    text = str(row["measured_gb"])
    if text[:1] in "<>":
        return ("fits" if text.startswith("<") else "OOM"), None
    return "value", float(text)  # nvidia-smi_GiB rows: GiB


def _second_value(row: pd.Series) -> tuple[str, float | None]:
    if row["kind"] == "fits_bool":
        return ("fits" if str(row["value"]) == "1" else "OOM"), None
    if row["kind"] == "nvidia-smi_MiB":
        return "value", float(row["value"]) * 2**20 / GIB
    raise ValueError(f"{row['id']}: unexpected kind {row['kind']!r} for a merged row")


def _words(text: str) -> set[str]:
    lowered = text.lower()
    return {w for w in _SETUP_WORDS if any(part in lowered for part in w.split("|"))}


def check_same(first: pd.DataFrame, second: pd.DataFrame) -> list[str]:
    """One line per merged pair ('HFT-02 = M-...-003: perf_train_gpu_one.md, bert-large-uncased, batch 4,
    seq 512, 14.599 GiB'); raises ``ValueError`` when a listed pair is not the same measurement."""
    first, second = first.set_index("id"), second.set_index("id")
    lines = []
    for one, two in SAME.items():
        a, b = first.loc[one], second.loc[two]
        facts = {
            "document": (_document(str(a["source_locator"])), _document(str(b["locator"]))),
            "model": (str(a["model"]), str(b["model"])),
            "batch": (int(a["batch"]), int(b["batch"])),
            "seq_len": (int(a["seq_len"]), int(b["seq_len"])),
            "setup": (_words(f"{a['precision']} {a['notes']} {a['source_locator']}"),
                      _words(f"{b['precision']} {str(b['settings']).split('CD=')[0]}")),  # not the legend
        }
        kind_a, value_a = _first_value(a)
        kind_b, value_b = _second_value(b)
        facts["outcome"] = (kind_a, kind_b)
        wrong = [name for name, (x, y) in facts.items() if x != y]
        if value_a is not None and value_b is not None and abs(value_a - value_b) > 0.001:
            wrong.append(f"value {value_a:.3f} vs {value_b:.3f} GiB")
        if wrong:
            raise ValueError(f"{one} and {two} are listed as one measurement but differ in: {', '.join(wrong)}")
        shown = f"{value_a:.3f} GiB" if value_a is not None else kind_a
        lines.append(f"{one} = {two}: {facts['document'][0]}, {a['model']}, batch {int(a['batch'])}, "
                     f"seq {int(a['seq_len'])}, {shown}")
    return lines


def once(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` (rows of both sets, column ``id``) without the first-set copies of merged measurements."""
    return frame[~frame["id"].isin(SAME)]
