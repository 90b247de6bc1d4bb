"""Inference engines as data (``planner/data/engines.toml``): the memory behaviours of each."""

from __future__ import annotations

from functools import cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from planner._data import read_data_toml
from planner.errors import UnsupportedError


class EngineProfile(BaseModel):
    """How one engine lays out memory during inference."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    label: str
    kv_cache: Literal["dynamic", "preallocated", "paged", "fixed"] = Field(
        description="dynamic: grows by torch.cat; preallocated: prompt+new allocated up front; "
                    "paged: vLLM pool; fixed: llama.cpp n_ctx allocated at start")
    logits_default: Literal["last", "full"]
    logits_fp32_copy: bool
    parallel_default: Literal["tensor", "pipeline"]
    unties_tied_embeddings: bool
    quantizes_lm_head: bool
    cuda_context: str
    cublas_workspace: bool
    moe_one_hot_mask: bool
    source: str = Field(min_length=1)


@cache
def _engines() -> dict[str, EngineProfile]:
    raw = read_data_toml("engines.toml", 1)
    return {name: EngineProfile(name=name, **entry) for name, entry in raw["engines"].items()}


def engine_names() -> list[str]:
    return list(_engines())


def get_engine(name: str | EngineProfile) -> EngineProfile:
    """The profile of engine ``name`` (hf, vllm, llamacpp, litgpt)."""
    if isinstance(name, EngineProfile):
        return name
    engines = _engines()
    key = str(name).strip().lower().replace("-", "").replace("_", "").replace(".", "")
    aliases = {"transformers": "hf", "huggingface": "hf", "llamacpp": "llamacpp", "ollama": "llamacpp",
               "llamacppserver": "llamacpp", "lightning": "litgpt"}
    key = aliases.get(key, key)
    if key not in engines:
        from hardware_db.names import did_you_mean

        raise UnsupportedError(f"unknown engine {name!r}.{did_you_mean(str(name), engines)} "
                               f"Supported engines: {', '.join(engines)}.")
    return engines[key]
