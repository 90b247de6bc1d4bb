"""Structural surgery that really shrinks tensors: whole blocks, MLP channels, attention head groups.

The counts come from :mod:`planner.models.derive` (the same rules the planner predicts with); this module
decides *which* units go and rewrites the modules and the Hugging Face config so the smaller model
runs, saves and reloads with ``from_pretrained``. Modules are addressed by their planner role (see
:class:`~executors.steps.layout.ModelLayout`), whatever their class (``nn.Linear``, ``Conv1D``):

- MLP channels: score of channel c = L2 norm of its rows in the expanding projections (gate and up;
  Phi-3's fused ``gate_up_proj`` holds gate rows then up rows, so channel c is rows c and F + c) and of
  column c of the down projection; each layer keeps its highest-scoring channels, the same count
  everywhere. The width goes into the family's config key (``intermediate_size``, GPT-2 ``n_inner``,
  OPT ``ffn_dim``, Falcon ``ffn_hidden_size``).
- Attention: score of a key/value group = L2 norm of its query rows, key and value rows and output
  columns; each layer keeps its highest-scoring groups (whole groups, see derive.py). Separate q/k/v
  projections, or Phi-3's fused ``qkv_proj`` (rows [q | k | v]).
- Blocks: block influence (ShortGPT, Men et al. 2024, arXiv 2403.03853): ``1 - mean cos(h_in, h_out)``
  over calibration tokens; the least influential blocks go. ``layer_idx`` attributes are renumbered so
  the KV cache indexes the remaining blocks.

Why hand-written rather than torch-pruning (evaluated: torch-pruning 1.6.1, torch 2.13, transformers 5.25):
its dependency graph of a 2-block tiny Llama builds in 0.07 s, but grouping the coupled layers
(``DependencyGraph.get_all_groups``) did not finish in 90 s (stuck in ``_fix_dependency_graph_non_recursive``:
the residual stream couples every block), and ``MetaPruner`` on the same model and on GPT-2 did not
finish in 240 s. Beyond that it has no pruner for ``Conv1D``, needs each family's head layout declared
(``num_heads`` per projection; fused q/k/v rows are not understood), and leaves the config untouched, so
the model neither reloads nor matches the planner's derived spec. Here the coupling is known from each
module's planner role, so the surgery is a few index selections per role.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from planner.errors import UnsupportedError
from planner.models.derive import ffn_config_updates, head_counts_config, layer_config_updates
from executors.steps.layout import LinearSite, ModelLayout, set_module
from executors.steps.linears import rebuilt, weight_matrix
from executors.steps.masks import run_batches

_EXPANDING_ROLES = ("gate", "up", "gate_up")  # MLP projections whose output rows are the channels


def _sites(layout: ModelLayout, prefix: str, component: str) -> dict[str, LinearSite]:
    """Role -> site of the ``component`` projections in the block whose path starts with ``prefix``."""
    return {s.role: s for s in layout.block_linears((component,)) if s.name.startswith(prefix) and s.role}


def _block_prefixes(layout: ModelLayout) -> list[str]:
    """``<stack>.<index>.`` of every block of every stack (an encoder-decoder model has two stacks)."""
    return [f"{path}.{index}." for path, blocks in layout.stacks for index in range(len(blocks))]


def _mlp_sites(layout: ModelLayout, prefix: str) -> dict[str, LinearSite]:
    sites = _sites(layout, prefix, "mlp")
    if "down" not in sites or not any(role in sites for role in _EXPANDING_ROLES):
        raise UnsupportedError(f"block {prefix.rstrip('.')} of {layout.model_type}: no MLP projections with known "
                               f"roles (found {sorted(sites) or 'none'}); its MLP channels cannot be pruned.")
    return sites


def _channel_rows(role: str, channels: torch.Tensor, width: int) -> torch.Tensor:
    """Output rows of an expanding projection that hold ``channels`` (fused gate_up: gate then up)."""
    return torch.cat([channels, channels + width]) if role == "gate_up" else channels


def ffn_channel_scores(layout: ModelLayout, prefix: str) -> torch.Tensor:
    sites = _mlp_sites(layout, prefix)
    width = sites["down"].in_features
    total = torch.zeros(width)
    for role, site in sites.items():
        squares = weight_matrix(site.module).detach().float() ** 2
        if role == "down":
            total += squares.sum(0)
        elif role == "gate_up":
            total += squares[:width].sum(1) + squares[width:].sum(1)
        elif role in _EXPANDING_ROLES:
            total += squares.sum(1)
    return total.sqrt()


def keep_ffn_channels(model: nn.Module, layout: ModelLayout, width: int) -> list[list[int]]:
    """Keep the ``width`` highest-scoring MLP channels of every block (of every stack); returns the kept indices."""
    kept_all = []
    spec = layout.require_spec("FFN-channel pruning")
    for prefix in _block_prefixes(layout):
        keep = torch.topk(ffn_channel_scores(layout, prefix), width).indices.sort().values
        sites = _mlp_sites(layout, prefix)
        current = sites["down"].in_features
        for role, site in sites.items():
            weight, bias = weight_matrix(site.module), site.module.bias
            if role in _EXPANDING_ROLES:
                rows = _channel_rows(role, keep, current)
                new = rebuilt(site.module, weight[rows], None if bias is None else bias[rows])
            elif role == "down":
                new = rebuilt(site.module, weight[:, keep], bias)
            else:
                continue
            set_module(model, site.name, new)
        kept_all.append(keep.tolist())
    for key, value in ffn_config_updates(spec, width).items():
        setattr(model.config, key, value)
    return kept_all


def _head_rows(heads: Sequence[int], head_dim: int, offset: int = 0) -> torch.Tensor:
    return torch.cat([torch.arange(offset + h * head_dim, offset + (h + 1) * head_dim) for h in heads])


def _attention_rows(layout: ModelLayout, groups: Sequence[int]) -> dict[str, torch.Tensor]:
    """Rows (q, k, v, fused qkv) and output columns (o) that belong to the key/value ``groups``."""
    spec = layout.spec
    per_group, head_dim = spec.num_heads // spec.num_kv_heads, spec.head_dim
    q_rows = _head_rows([g * per_group + i for g in groups for i in range(per_group)], head_dim)
    kv_rows = _head_rows(groups, head_dim)
    q_size, kv_size = spec.num_heads * head_dim, spec.num_kv_heads * head_dim
    return {"q": q_rows, "k": kv_rows, "v": kv_rows, "o": q_rows,
            "qkv": torch.cat([q_rows, kv_rows + q_size, kv_rows + q_size + kv_size])}


def _attention_sites(layout: ModelLayout, layer: int) -> dict[str, LinearSite]:
    sites = _sites(layout, layout.block_prefix(layer), "attention")
    if "o" not in sites or not ({"q", "k", "v"} <= set(sites) or "qkv" in sites):
        raise UnsupportedError(f"layer {layer} of {layout.model_type}: attention projections with known roles "
                               f"not found (found {sorted(sites) or 'none'}); heads cannot be pruned.")
    return sites


def head_group_scores(layout: ModelLayout, layer: int) -> torch.Tensor:
    sites = _attention_sites(layout, layer)
    squares = {role: weight_matrix(site.module).detach().float() ** 2 for role, site in sites.items()}
    scores = []
    for group in range(layout.spec.num_kv_heads):
        rows = _attention_rows(layout, [group])
        total = squares["o"][:, rows["o"]].sum()
        for role in ("q", "k", "v", "qkv"):
            if role in squares:
                total = total + squares[role][rows[role]].sum()
        scores.append(total)
    return torch.stack(scores).sqrt()


def keep_head_groups(model: nn.Module, layout: ModelLayout, groups: int) -> list[list[int]]:
    """Keep the ``groups`` highest-scoring key/value groups (with their query heads) in every layer."""
    spec = layout.require_spec("attention-head pruning")
    per_group = spec.num_heads // spec.num_kv_heads
    kept_all = []
    for layer in range(len(layout.blocks)):
        keep = torch.topk(head_group_scores(layout, layer), groups).indices.sort().values.tolist()
        rows = _attention_rows(layout, keep)
        sites = _attention_sites(layout, layer)
        for role, site in sites.items():
            weight, bias = weight_matrix(site.module), site.module.bias
            if role == "o":
                new = rebuilt(site.module, weight[:, rows["o"]], bias)
            elif role in rows:
                new = rebuilt(site.module, weight[rows[role]], None if bias is None else bias[rows[role]])
            else:
                continue
            set_module(model, site.name, new)
        attention = model.get_submodule(sites["o"].name.rpartition(".")[0])
        for attribute, value in (("num_heads", groups * per_group), ("num_key_value_heads", groups)):
            if isinstance(getattr(attention, attribute, None), int):
                setattr(attention, attribute, value)
        kept_all.append(keep)
    for key, value in head_counts_config(spec, groups).items():
        setattr(model.config, key, value)
    return kept_all


def keep_blocks(model: nn.Module, layout: ModelLayout, indices: Sequence[int]) -> None:
    """Keep only the transformer blocks at ``indices`` (in order) and fix the config to match."""
    spec = layout.require_spec("whole-layer pruning")
    indices = sorted(indices)
    blocks = nn.ModuleList([layout.blocks[i] for i in indices])
    set_module(model, layout.blocks_path, blocks)
    for new_index, block in enumerate(blocks):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_index
    for key, value in layer_config_updates(spec, indices).items():
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
