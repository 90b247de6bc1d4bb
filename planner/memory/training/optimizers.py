"""Optimizer state and step memory for the trainable tensors.

States exist only for trainable parameters. Per tensor of ``n`` elements (catalog facts in
``planner/data/training.toml``):

- plain states (AdamW: ``exp_avg`` + ``exp_avg_sq``; SGD momentum; Lion): ``k x n x bytes``, where
  torch optimizers use the parameter's dtype (fp32 under AMP: AdamW = 8 bytes/param; pure bf16: 4);
- 8-bit blockwise states (bitsandbytes): ``k x (n + ceil(n / 256) x 4)``, fp32 below 4096 elements;
- Adafactor (factored, no first moment): ``(rows + cols) x 4`` for a >=2-D tensor, ``n x 4`` for 1-D
  (Shazeer & Stern 2018, Algorithm 4).

``step()`` may need temporaries: the foreach AdamW materialises ``sqrt(exp_avg_sq)`` for the whole
list (one state-sized copy), the one-parameter-at-a-time variants only for the largest tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from planner.memory.training.catalog import Optimizer
from planner.memory.training.trainable import TensorShape


def tensor_state_bytes(optimizer: Optimizer, shape: tuple[int, ...], param_bytes: int) -> float:
    """State bytes of one trainable tensor of ``shape`` stored with ``param_bytes`` per element."""
    numel = math.prod(shape)
    if optimizer.state_tensors == 0:
        return 0.0
    if optimizer.factored and len(shape) >= 2:
        rows, cols = numel // shape[-1], numel // shape[-2]
        return float(optimizer.state_tensors * (rows + cols) * optimizer.state_bytes)
    if optimizer.block_size:
        if numel < optimizer.min_8bit_size:
            return float(optimizer.state_tensors * numel * 4)
        blocks = math.ceil(numel / optimizer.block_size)
        return float(optimizer.state_tensors * (numel * optimizer.state_bytes + blocks * optimizer.block_scale_bytes))
    return float(optimizer.state_tensors * numel * (optimizer.state_bytes or param_bytes))


def state_bytes(optimizer: Optimizer, tensors: Iterable[TensorShape], param_bytes: int) -> float:
    """Optimizer-state bytes of all trainable ``tensors``."""
    return sum(t.count * tensor_state_bytes(optimizer, t.shape, param_bytes) for t in tensors)


def step_temporary_bytes(optimizer: Optimizer, tensors: Iterable[TensorShape], param_bytes: int) -> float:
    """Extra bytes alive while ``step()`` runs (see the module docstring)."""
    tensors = list(tensors)
    if optimizer.step_temporaries_scope == "none" or not tensors:
        return 0.0
    element = optimizer.state_bytes or param_bytes
    if optimizer.step_temporaries_scope == "all":
        return float(optimizer.step_temporaries * sum(t.numel * t.count for t in tensors) * element)
    return float(optimizer.step_temporaries * max(t.numel for t in tensors) * element)
