"""One-off generator: split ../shared/research/model_configs.json into planner/data/models/<family>.json.

The runtime only reads the generated JSON files; this script documents where they came from and can be
re-run when the research file is updated:

    python scripts/import_model_configs.py /path/to/model_configs.json

Each entry keeps its provenance (source, corroborating sources, notes, verified flag) next to the
config.json facts, so every number in the registry can be traced.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

FAMILY_OF_MODEL_TYPE = {
    "llama": "llama", "mistral": "mistral", "mixtral": "mistral", "qwen": "qwen", "qwen2": "qwen",
    "qwen3": "qwen", "qwen3_moe": "qwen", "gemma": "gemma", "gemma2": "gemma", "gemma3_text": "gemma",
    "phi3": "phi", "deepseek_v2": "deepseek", "deepseek_v3": "deepseek", "gpt_oss": "gpt_oss",
    "gpt2": "gpt2", "gpt_bigcode": "starcoder", "opt": "opt", "falcon": "falcon", "bert": "bert",
    "t5": "t5",
}
KEEP = ("name", "aliases", "config", "params_total_exact", "params_full_multimodal_exact",
        "params_published", "instantiate_as", "source", "corroborating_sources", "verified", "notes")


def main(src: str) -> None:
    entries = json.loads(Path(src).read_text())
    families: dict[str, list[dict]] = defaultdict(list)
    for entry in entries:
        family = FAMILY_OF_MODEL_TYPE[entry["config"]["model_type"]]
        families[family].append({key: entry[key] for key in KEEP if key in entry})
    out_dir = Path(__file__).resolve().parents[1] / "planner" / "data" / "models"
    out_dir.mkdir(parents=True, exist_ok=True)
    for family, models in sorted(families.items()):
        payload = {"schema_version": 1, "family": family, "models": models}
        (out_dir / f"{family}.json").write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
        print(f"{family}: {len(models)} models")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/research/model_configs.json")
