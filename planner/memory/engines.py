"""Inference engines as data (``planner/data/engines.toml``): the memory behaviours of each."""

from __future__ import annotations

from functools import cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from planner._data import read_data_toml
from planner.errors import InvalidRequestError, UnsupportedError


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

class HFVersionRule(BaseModel):
    """A transformers release before which generate() behaves differently (engines.toml [[hf_versions]])."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    before: str
    hf_cache: Literal["legacy"] | None = None
    hf_logits: Literal["full"] | None = None
    source: str = Field(min_length=1)


def _version_tuple(text: str) -> tuple[int, int]:
    parts = str(text).strip().lstrip("v").split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise InvalidRequestError(f"transformers_version must look like '4.38' or '4.38.2', got {text!r}.") from None


@cache
def _hf_versions() -> tuple[HFVersionRule, ...]:
    raw = read_data_toml("engines.toml", 1)
    return tuple(HFVersionRule(**entry) for entry in raw.get("hf_versions", []))


def hf_version_defaults(version: str) -> dict[str, tuple[str, str]]:
    """``{option: (value, source)}`` that a transformers ``version`` implies for generate() (empty for
    current releases)."""
    wanted = _version_tuple(version)
    out: dict[str, tuple[str, str]] = {}
    for rule in _hf_versions():
        if wanted < _version_tuple(rule.before):
            for option in ("hf_cache", "hf_logits"):
                value = getattr(rule, option)
                if value is not None:
                    out[option] = (value, rule.source)
    return out


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
