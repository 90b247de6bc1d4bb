"""Which single weights to zero: scores (magnitude, Wanda) and masks (per layer, global, per row, N:M).

- Magnitude: score ``|W_ij|``.
- Wanda (Sun et al. 2023, arXiv 2306.11695): score ``|W_ij| * ||X_j||_2``, ``X_j`` the j-th input feature of
  the layer over all calibration tokens, compared within each output row. The norms come from one
  forward pass of the model as it is before the step (the reference implementation instead feeds each
  block the outputs of the already-pruned blocks before it).
- Counts are exact: a tensor pruned to ``level`` loses ``round_half_up(level * n)`` weights (per layer),
  ``round_half_up(level * in)`` per row (Wanda), or exactly ``M - N`` of every ``M`` consecutive weights
  along the input dimension (N:M); a global mask ranks all targeted weights together.
Masks are applied by writing zeros into the weights: no mask buffers or hooks stay behind.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from executors.steps.linears import features
from planner.models.derive import round_half_up


def lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask of the ``count`` lowest entries of ``scores`` along the last dimension."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if count > 0:
        mask.scatter_(-1, torch.topk(scores, count, dim=-1, largest=False).indices, True)
    return mask


def layer_prune_mask(scores: torch.Tensor, level: float) -> torch.Tensor:
    """Prune mask (True = zero it) of the lowest ``level`` fraction of the whole tensor."""
    flat = scores.reshape(-1)
    return lowest(flat, round_half_up(level * flat.numel())).reshape(scores.shape)


def row_prune_mask(scores: torch.Tensor, level: float) -> torch.Tensor:
    """Prune mask of the lowest ``level`` fraction within each output row (Wanda's comparison group)."""
    return lowest(scores, round_half_up(level * scores.shape[-1]))


def nm_prune_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Prune mask keeping the ``n`` highest of every ``m`` consecutive weights of each row."""
    rows, cols = scores.shape
    grouped = scores.reshape(rows, cols // m, m)
    return lowest(grouped, m - n).reshape(rows, cols)


def global_prune_masks(scores: Sequence[torch.Tensor], level: float) -> list[torch.Tensor]:
    """Prune masks of the lowest ``level`` fraction of all ``scores`` ranked together."""
    flat = torch.cat([s.reshape(-1) for s in scores])
    mask = lowest(flat, round_half_up(level * flat.numel()))
    out, start = [], 0
    for s in scores:
        out.append(mask[start:start + s.numel()].reshape(s.shape))
        start += s.numel()
    return out


def is_valid_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """Whether every group of ``m`` consecutive weights along the rows has at most ``n`` non-zeros."""
    rows, cols = weight.shape
    if cols % m:
        return False
    return bool(((weight.reshape(rows, cols // m, m) != 0).sum(-1) <= n).all())


def input_norms(model: nn.Module, modules: dict[str, nn.Module], batches: Sequence[torch.Tensor],
                device: str) -> dict[str, torch.Tensor]:
    """``||X_j||_2`` of every input feature of each module over the calibration batches."""
    sums = {name: torch.zeros(features(module)[0], dtype=torch.float64) for name, module in modules.items()}
    handles = []
    for name, module in modules.items():
        def accumulate(_module, args, _name=name):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
            sums[_name] += (x * x).sum(0).cpu()
        handles.append(module.register_forward_pre_hook(accumulate))
    try:
        run_batches(model, batches, device)
    finally:
        for handle in handles:
            handle.remove()
    return {name: total.sqrt().to(torch.float32) for name, total in sums.items()}


@torch.no_grad()
def run_batches(model: nn.Module, batches: Sequence[torch.Tensor], device: str) -> None:
    was_training = model.training
    model.eval()
    try:
        encoder_decoder = getattr(getattr(model, "config", None), "is_encoder_decoder", False)
        for batch in batches:
            ids = batch.to(device)
            # an encoder-decoder model reads the batch on both sides (T5: decoder input = the same tokens)
            model(input_ids=ids, decoder_input_ids=ids) if encoder_decoder else model(input_ids=ids)
    finally:
        model.train(was_training)
