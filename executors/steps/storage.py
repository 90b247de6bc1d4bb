"""Exact byte and element counts of what a model stores.

- :func:`state_dict_bytes`: bytes of every tensor in ``state_dict()`` (a tensor shared by two keys, e.g.
  tied embeddings, counted once). Quantized torch tensors count their int8 values plus their scales and
  zero points; bitsandbytes modules put their packed weights and quantization state in the state dict.
- :func:`semi_structured_bytes`: size of a 2:4 sparse matrix in PyTorch's semi-structured (CUTLASS)
  format; :func:`bitmask_sparse_bytes`: kept values plus a 1-bit-per-element mask (used for 4:8, which
  has no PyTorch format).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a tensor occupies; a quantized tensor counts its values, scales and zero points."""
    if tensor.is_quantized:
        values = tensor.numel() * tensor.element_size()
        if tensor.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric,
                                torch.per_channel_affine_float_qparams):
            scales = tensor.q_per_channel_scales()
            zero_points = tensor.q_per_channel_zero_points()
            return values + scales.numel() * scales.element_size() + zero_points.numel() * zero_points.element_size()
        return values + 8 + 8  # one float64 scale and one int64 zero point
    return tensor.numel() * tensor.element_size()


def _storage_key(tensor: torch.Tensor) -> tuple[int, int, tuple[int, ...], torch.dtype] | None:
    if tensor.is_quantized or tensor.device.type == "meta":
        return None
    return tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.dtype


def _value_bytes(value: Any, seen: set) -> int:
    if isinstance(value, torch.Tensor):
        key = _storage_key(value)
        if key is not None:
            if key in seen:
                return 0
            seen.add(key)
        return tensor_bytes(value)
    if isinstance(value, (tuple, list)):
        return sum(_value_bytes(v, seen) for v in value)
    return 0


def state_dict_bytes(module: nn.Module) -> int:
    """Bytes of all tensors in ``module.state_dict()``, shared tensors counted once."""
    seen: set = set()
    return sum(_value_bytes(value, seen) for value in module.state_dict().values())


def count_params(module: nn.Module) -> int:
    """``sum(p.numel())`` over parameters, shared parameters counted once."""
    return sum(p.numel() for p in module.parameters())


def count_zeros(module: nn.Module) -> int:
    """Exact zeros in the floating-point parameters (shared parameters counted once)."""
    return sum(int((p == 0).sum()) for p in module.parameters() if p.is_floating_point())


def semi_structured_bytes(rows: int, cols: int, dtype_bytes: int) -> int:
    """Bytes of a ``rows x cols`` 2:4 matrix in PyTorch's semi-structured (CUTLASS) format.

    Half of the values are kept (``rows * cols / 2`` elements) plus metadata: 16-bit values use int16
    metadata of ``rows * cols / 16`` elements, int8 values int32 metadata of ``rows * cols / 32``
    (``torch/sparse/_semi_structured_conversions.py``, ``sparse_semi_structured_from_dense_cutlass``).
    That is 9/16 of dense for fp16/bf16 and 10/16 for int8; a test checks it against the real conversion.
    """
    values = rows * cols // 2 * dtype_bytes
    if dtype_bytes == 1:
        return values + rows * cols // 32 * 4
    return values + rows * cols // 16 * 2


def bitmask_sparse_bytes(rows: int, cols: int, kept_fraction: float, dtype_bytes: int) -> int:
    """Kept values plus one mask bit per dense element (a generic N:M storage; PyTorch has none for 4:8)."""
    elements = rows * cols
    return round(elements * kept_fraction) * dtype_bytes + (elements + 7) // 8
