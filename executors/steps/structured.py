"""Structural surgery that really shrinks tensors: whole blocks, MLP channels, attention head groups.

The counts come from :mod:`planner.models.derive` (the same rules the planner predicts with); this module
decides *which* units go and rewrites the modules and the Hugging Face config so the smaller model
runs, saves and reloads with ``from_pretrained``:

- MLP channels: score of channel c = L2 norm of (gate row c, up row c, down column c) (BERT: intermediate
  row c, output column c); each layer keeps its highest-scoring channels, the same count everywhere.
- Attention: score of a key/value group = L2 norm of its query rows, key and value rows and output
  columns; each layer keeps its highest-scoring groups (whole groups, see derive.py).
- Blocks: block influence (ShortGPT, Men et al. 2024, arXiv 2403.03853): ``1 - mean cos(h_in, h_out)``
  over calibration tokens; the least influential blocks go. ``layer_idx`` attributes are renumbered so
  the KV cache indexes the remaining blocks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from planner.models.derive import head_counts_config, layer_config_updates
from executors.steps.layout import ModelLayout, linear_like, set_module
from executors.steps.masks import run_batches

_ROWS_ROLES = ("gate", "up")  # MLP projections whose output rows are the channels


def _mlp_sites(layout: ModelLayout, layer: int) -> dict[str, tuple[str, nn.Linear]]:
    prefix = layout.block_prefix(layer)
    return {s.role: (s.name, s.module) for s in layout.block_linears(("mlp",)) if s.name.startswith(prefix)}


def _attention_sites(layout: ModelLayout, layer: int) -> dict[str, tuple[str, nn.Linear]]:
    prefix = layout.block_prefix(layer)
    return {s.role: (s.name, s.module) for s in layout.block_linears(("attention",)) if s.name.startswith(prefix)}


def ffn_channel_scores(layout: ModelLayout, layer: int) -> torch.Tensor:
    sites = _mlp_sites(layout, layer)
    total = torch.zeros(sites["down"][1].in_features)
    for role, (_, module) in sites.items():
        weight = module.weight.detach().float()
        total += (weight * weight).sum(1) if role in _ROWS_ROLES else (weight * weight).sum(0)
    return total.sqrt()


def keep_ffn_channels(model: nn.Module, layout: ModelLayout, width: int) -> list[list[int]]:
    """Keep the ``width`` highest-scoring MLP channels of every layer; returns the kept indices."""
    kept_all = []
    for layer in range(len(layout.blocks)):
        keep = torch.topk(ffn_channel_scores(layout, layer), width).indices.sort().values
        for role, (name, module) in _mlp_sites(layout, layer).items():
            if role in _ROWS_ROLES:
                new = linear_like(module, module.weight[keep], None if module.bias is None else module.bias[keep])
            else:
                new = linear_like(module, module.weight[:, keep], module.bias)
            set_module(model, name, new)
        kept_all.append(keep.tolist())
    model.config.intermediate_size = width
    return kept_all


def _head_rows(heads: Sequence[int], head_dim: int) -> torch.Tensor:
    return torch.cat([torch.arange(h * head_dim, (h + 1) * head_dim) for h in heads])


def head_group_scores(layout: ModelLayout, layer: int) -> torch.Tensor:
    spec = layout.spec
    per_group, head_dim = spec.num_heads // spec.num_kv_heads, spec.head_dim
    sites = _attention_sites(layout, layer)
    squares = {role: module.weight.detach().float() ** 2 for role, (_, module) in sites.items()}
    scores = []
    for group in range(spec.num_kv_heads):
        q_rows = _head_rows(range(group * per_group, (group + 1) * per_group), head_dim)
        kv_rows = _head_rows([group], head_dim)
        scores.append(squares["q"][q_rows].sum() + squares["k"][kv_rows].sum() + squares["v"][kv_rows].sum()
                      + squares["o"][:, q_rows].sum())
    return torch.stack(scores).sqrt()


def keep_head_groups(model: nn.Module, layout: ModelLayout, groups: int) -> list[list[int]]:
    """Keep the ``groups`` highest-scoring key/value groups (with their query heads) in every layer."""
    spec = layout.spec
    per_group, head_dim = spec.num_heads // spec.num_kv_heads, spec.head_dim
    kept_all = []
    for layer in range(len(layout.blocks)):
        keep = torch.topk(head_group_scores(layout, layer), groups).indices.sort().values.tolist()
        q_rows = _head_rows([g * per_group + i for g in keep for i in range(per_group)], head_dim)
        kv_rows = _head_rows(keep, head_dim)
        for role, (name, module) in _attention_sites(layout, layer).items():
            if role == "o":
                new = linear_like(module, module.weight[:, q_rows], module.bias)
            else:
                rows = q_rows if role == "q" else kv_rows
                new = linear_like(module, module.weight[rows], None if module.bias is None else module.bias[rows])
            set_module(model, name, new)
        attention = model.get_submodule(_attention_sites(layout, layer)["o"][0].rpartition(".")[0])
        for attribute, value in (("num_heads", groups * per_group), ("num_key_value_heads", groups)):
            if isinstance(getattr(attention, attribute, None), int):
                setattr(attention, attribute, value)
        kept_all.append(keep)
    for key, value in head_counts_config(spec, groups).items():
        setattr(model.config, key, value)
    return kept_all


def keep_blocks(model: nn.Module, layout: ModelLayout, indices: Sequence[int]) -> None:
    """Keep only the transformer blocks at ``indices`` (in order) and fix the config to match."""
    indices = sorted(indices)
    blocks = nn.ModuleList([layout.blocks[i] for i in indices])
    set_module(model, layout.blocks_path, blocks)
    for new_index, block in enumerate(blocks):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    for key, value in layer_config_updates(layout.spec, indices).items():
        setattr(model.config, key, value)


def block_influence(model: nn.Module, layout: ModelLayout, batches: Sequence[torch.Tensor],
                    device: str) -> torch.Tensor:
    """``1 - mean cos(input, output)`` of every block over the calibration tokens (ShortGPT)."""
    sums = torch.zeros(len(layout.blocks), dtype=torch.float64)
    tokens = torch.zeros(len(layout.blocks), dtype=torch.float64)
    inputs: dict[int, torch.Tensor] = {}
    handles = []
    for index, block in enumerate(layout.blocks):
        def remember(_module, args, kwargs, _i=index):
            inputs[_i] = (args[0] if args else kwargs["hidden_states"]).detach()

        def compare(_module, _args, _kwargs, output, _i=index):
            out = output[0] if isinstance(output, tuple) else output
            cos = F.cosine_similarity(inputs.pop(_i).float(), out.detach().float(), dim=-1)
            sums[_i] += cos.sum().double().cpu()
            tokens[_i] += cos.numel()
        handles.append(block.register_forward_pre_hook(remember, with_kwargs=True))
        handles.append(block.register_forward_hook(compare, with_kwargs=True))
    try:
        run_batches(model, batches, device)
    finally:
        for handle in handles:
            handle.remove()
    return (1 - sums / tokens).float()
