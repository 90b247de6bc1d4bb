"""LoRA adapters: which Linear modules get one, and their exact parameter counts.

A rank-``r`` adapter on a Linear ``in -> out`` adds ``lora_A`` (``r x in``) and ``lora_B``
(``out x r``): ``r * (in + out)`` parameters (Hu et al. 2021, eq. 3; peft ``LoraLayer.update_layer``).
``lora_alpha`` only scales the update and costs no memory.

Targets are matched the way peft matches ``target_modules``: a module name matches when it equals the
target or ends with ``"." + target`` (``q_proj``, ``mlp.c_proj``); ``"all-linear"`` is every Linear
except the output layer (peft ``INCLUDE_LINEAR_LAYERS_SHORTHAND``). A fused module (GPT-2 ``c_attn``,
Phi-3 ``qkv_proj``) named as a target gets one adapter over its whole output. Targets may also be
roles (``q``, ``k``, ``v``, ``o``, ``gate``, ``up``, ``down``): on a fused module a role adapts only
its slice of the output, as LitGPT's ``LoRAQKVLinear`` with ``lora_query``/``lora_value`` does
(``r * (in + slice_out)`` per enabled slice).
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.errors import InvalidRequestError
from planner.models.spec import ModelSpec, ParamGroup

ALL_LINEAR = "all-linear"
ROLES = ("q", "k", "v", "o", "gate", "up", "down", "qkv", "gate_up", "router", "lm_head")
_FUSED_PARTS = {"qkv": ("q", "k", "v"), "gate_up": ("gate", "up")}


@dataclass(frozen=True)
class Adapter:
    """One LoRA adapter on ``count`` identical modules (one per layer, or per expert)."""

    module: str
    role: str | None
    in_features: int
    out_features: int
    count: int
    layers: tuple[int, ...]
    rank: int

    @property
    def params_each(self) -> int:
        """``r * (in + out)``: lora_A is ``r x in``, lora_B is ``out x r``."""
        return self.rank * (self.in_features + self.out_features)

    @property
    def params(self) -> int:
        return self.params_each * self.count

    @property
    def per_layer(self) -> int:
        """Instances of this adapter in each layer it lives in (experts: one per expert)."""
        return self.count // max(1, len(self.layers))


def _slice_width(spec: ModelSpec, group: ParamGroup, part: str) -> int:
    """Output width of one role inside a fused module."""
    if group.role == "qkv":
        attention = spec.attention
        width = attention.num_heads if part == "q" else attention.num_kv_heads
        return width * attention.head_dim
    return group.out_features // 2  # gate_up: gate and up halves are equal


def _matches_name(group: ParamGroup, target: str) -> bool:
    return group.name == target or group.name.endswith("." + target)


def _targets_for(spec: ModelSpec, target: str) -> list[tuple[ParamGroup, str | None]]:
    """(group, slice role or None for the whole module) pairs that ``target`` selects."""
    linears = spec.linear_groups()
    if target == ALL_LINEAR:
        return [(g, None) for g in linears if g.role != "lm_head"]
    by_name = [(g, None) for g in linears if _matches_name(g, target)]
    if by_name:
        return by_name
    if target not in ROLES:
        return []
    whole = [(g, None) for g in linears if g.role == target]
    sliced = [(g, target) for g in linears if target in _FUSED_PARTS.get(g.role or "", ())]
    return whole + sliced


def module_names(spec: ModelSpec) -> list[str]:
    """The Linear module names (last path component) a target list can use, in model order."""
    names: list[str] = []
    for group in spec.linear_groups():
        if group.leaf_name not in names:
            names.append(group.leaf_name)
    return names


def lora_adapters(spec: ModelSpec, rank: int, targets: tuple[str, ...] | list[str]) -> tuple[Adapter, ...]:
    """Every adapter for ``targets`` at ``rank``; raises for a bad rank or a target matching nothing.

    >>> # Llama-3.1-8B, r=8 on q_proj and v_proj: 32 x 8 x ((4096+4096) + (4096+1024)) = 3,407,872
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise InvalidRequestError(f"LoRA rank must be a positive integer, got {rank!r}.")
    targets = tuple(targets)
    if not targets:
        raise InvalidRequestError("LoRA needs at least one target module (e.g. q_proj,v_proj or all-linear).")
    chosen: dict[tuple[str, str | None], Adapter] = {}
    for target in targets:
        matches = _targets_for(spec, target.strip())
        if not matches:
            raise InvalidRequestError(
                f"LoRA target {target!r} matches no Linear module of {spec.name}. Its Linear modules are: "
                f"{', '.join(module_names(spec))}; roles: {', '.join(ROLES[:7])}; or {ALL_LINEAR!r}.")
        for group, part in matches:
            out = group.out_features if part is None else _slice_width(spec, group, part)
            chosen[(group.name, part)] = Adapter(
                module=group.name if part is None else f"{group.name}[{part}]", role=part or group.role,
                in_features=group.in_features, out_features=out, count=group.count, layers=group.layers,
                rank=rank)
    # a whole-module adapter replaces slice adapters on the same module
    whole = {name for name, part in chosen if part is None}
    adapters = tuple(a for (name, part), a in chosen.items() if part is None or name not in whole)
    for adapter in adapters:
        width = min(adapter.in_features, adapter.out_features)
        if rank > width:
            raise InvalidRequestError(
                f"LoRA rank {rank} is larger than {adapter.module} ({adapter.in_features} -> "
                f"{adapter.out_features}); the rank can be at most {width}.")
    return adapters


def default_targets(spec: ModelSpec) -> tuple[str, ...]:
    """The query and value projections, named as the model names them (peft's per-model default,
    ``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``: q_proj/v_proj for Llama-style models, the
    fused c_attn / query_key_value / qkv_proj module where q, k, v are one Linear; for MLA the query
    and key-value up-projections)."""
    by_role: dict[str, str] = {}
    for group in spec.linear_groups():
        if group.role and group.name.startswith("layers."):
            by_role.setdefault(group.role, group.leaf_name)
    if "qkv" in by_role:
        return (by_role["qkv"],)
    if "q" in by_role and "v" in by_role:
        return by_role["q"], by_role["v"]
    return tuple(by_role[r] for r in ("q_b", "q", "kv_b") if r in by_role) or (ALL_LINEAR,)


def adapter_params(adapters: tuple[Adapter, ...]) -> int:
    """Total adapter parameters."""
    return sum(a.params for a in adapters)
