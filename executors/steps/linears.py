"""Modules that compute ``y = x W^T + b``, whatever their class: the one view every step works through.

Families store the same affine map differently: ``nn.Linear`` (and subclasses such as Falcon's
``FalconLinear`` or bitsandbytes' layers) keep ``weight`` as ``out x in``; transformers' ``Conv1D``
(GPT-2, GPT-BigCode) keeps it transposed, ``in x out`` (``nf`` = out features). The helpers below give
every step the ``out x in`` matrix (a view, so in-place edits such as pruning masks reach the real
weight), the feature counts, a rebuilt module of the same kind with new tensors (structured pruning:
a pruned Conv1D stays a Conv1D, so ``from_pretrained`` still reloads it) and a plain ``nn.Linear``
equivalent (for modules that only exist as Linear: bitsandbytes layers, low-rank factors).
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D``: ``x @ weight + bias`` with ``weight`` of shape ``(in, out)``, ``nf = out``."""
    weight = getattr(module, "weight", None)
    return (not isinstance(module, nn.Linear) and isinstance(getattr(module, "nf", None), int)
            and isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.shape[1] == module.nf)


def is_linear_like(module: nn.Module) -> bool:
    """Whether ``module`` computes an affine map of its last dimension (Linear, Conv1D, quantized Linear)."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def is_dense(module: nn.Module) -> bool:
    """A linear-like module whose weight is a plain floating-point matrix (not quantized or packed)."""
    weight = getattr(module, "weight", None)
    return (isinstance(weight, torch.Tensor) and weight.is_floating_point() and weight.dim() == 2
            and type(weight) in (torch.Tensor, nn.Parameter))


def features(module: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a linear-like module."""
    if is_conv1d(module):
        return module.weight.shape[0], module.nf
    return module.in_features, module.out_features


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The ``out x in`` weight of a dense linear-like module (a view of the stored tensor)."""
    return module.weight.t() if is_conv1d(module) else module.weight


def rebuilt(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A module of ``module``'s kind computing ``x weight^T + bias`` (``weight`` given ``out x in``)."""
    new = copy.copy(module)
    new._parameters = dict(module._parameters)
    grad = module.weight.requires_grad
    stored = weight.t() if is_conv1d(module) else weight
    new.weight = nn.Parameter(stored.detach().clone().contiguous().to(module.weight.dtype), requires_grad=grad)
    if bias is None:
        new.bias = None
    else:
        new.bias = nn.Parameter(bias.detach().clone().to(module.weight.dtype), requires_grad=grad)
    out_features, in_features = weight.shape
    if is_conv1d(module):
        new.nf = out_features
    else:
        new.in_features, new.out_features = in_features, out_features
    return new


def linear_like(source: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A new plain ``nn.Linear`` holding ``weight`` (out x in) and ``bias``, on ``source``'s device and dtype."""
    out_features, in_features = weight.shape
    layer = nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
    grad = source.weight.requires_grad
    layer.weight = nn.Parameter(weight.detach().clone().contiguous().to(source.weight.dtype), requires_grad=grad)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().clone().to(source.weight.dtype), requires_grad=grad)
    layer.train(source.training)
    return layer


def as_linear(module: nn.Module) -> nn.Linear:
    """``module`` itself if it is an ``nn.Linear``, else an equivalent plain ``nn.Linear`` (Conv1D)."""
    if isinstance(module, nn.Linear):
        return module
    return linear_like(module, weight_matrix(module), module.bias)
