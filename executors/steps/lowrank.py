"""Low-rank factorisation of Linear layers by truncated SVD (seeds/003 ``LowRankDecomposer``).

``W (out x in) ~ U_r diag(S_r) V_r^T``: the Linear becomes ``first: in -> r`` (weight ``diag(S_r) V_r^T``, no
bias) followed by ``second: r -> out`` (weight ``U_r``, the original bias), ``r = ceil(ratio * min(in, out))``
(:func:`planner.models.derive.low_rank_rank`). Layers where ``r (in + out) >= in * out`` would not save
parameters; they stay whole and the report says so. :func:`planner.models.derive.low_rank_params` predicts
the resulting parameter count. The factorised module has different state-dict keys (``q_proj.first.weight``),
so ``from_pretrained`` cannot reload such a checkpoint into the original architecture.
"""

from __future__ import annotations

import torch
from torch import nn

from planner.models.derive import low_rank_rank, low_rank_saves
from planner.strategy import CompressionStrategy, LowRankSpec
from executors.steps import register_step
from executors.steps._recorder import Recorder
from executors.steps.context import StepContext
from executors.steps.layout import ModelLayout, set_module
from executors.steps.linears import is_dense, linear_like, weight_matrix
from executors.steps.report import NoEffectError, StepReport
from executors.steps.storage import count_params, state_dict_bytes

_TARGETS = {"all-linear": ("attention", "mlp"), "attention": ("attention",), "mlp": ("mlp",)}


class LowRankLinear(nn.Module):
    """``second(first(x))``: a rank-``r`` replacement of an ``in -> out`` Linear."""

    def __init__(self, first: nn.Linear, second: nn.Linear):
        super().__init__()
        self.first = first
        self.second = second
        self.in_features = first.in_features
        self.out_features = second.out_features
        self.rank = first.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The factor holding the output rows: for code that reads ``module.weight.dtype`` / ``.device``
        (T5's feed-forward does); the product of the factors is never formed."""
        return self.second.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))


def factorise(linear: nn.Module, rank: int) -> LowRankLinear:
    """The rank-``rank`` truncated SVD of a dense linear-like module (Linear or Conv1D)."""
    weight = weight_matrix(linear).detach().float()
    u, s, vh = torch.linalg.svd(weight, full_matrices=False)
    first = linear_like(linear, s[:rank, None] * vh[:rank], None)
    second = linear_like(linear, u[:, :rank], linear.bias)
    return LowRankLinear(first, second)


@register_step(LowRankSpec)
def low_rank(model: nn.Module, spec: LowRankSpec, context: StepContext,
             strategy: CompressionStrategy) -> tuple[nn.Module, StepReport]:
    rec = Recorder("low_rank", spec, model)
    layout = ModelLayout(model)
    targets = _TARGETS[spec.targets]
    for path in layout.expert_weights():
        rec.skip(path, "fused 3-D expert tensor: not factorised (as planner.models.derive.low_rank_params assumes)")
    for site in layout.linear_sites():
        module = site.module
        if site.layer is None or site.component not in targets:
            rec.skip(site.name, f"not a {'/'.join(targets)} Linear of the transformer blocks")
            continue
        if not is_dense(module):
            rec.skip(site.name, f"already quantized ({type(module).__name__})")
            continue
        n_in, n_out = site.in_features, site.out_features
        rank = low_rank_rank(n_in, n_out, spec.rank_ratio)
        if not low_rank_saves(n_in, n_out, rank):
            rec.skip(site.name, f"rank {rank} would not save parameters: {rank} x ({n_in} + {n_out}) >= "
                                f"{n_in} x {n_out}")
            continue
        before, params = state_dict_bytes(module), count_params(module)
        new = factorise(module, rank)
        set_module(model, site.name, new)
        rec.change(name=site.name, action=f"rank {rank}", params_before=params, params_after=count_params(new),
                   bytes_before=before, bytes_after=state_dict_bytes(new),
                   detail={"rank": rank, "in_features": n_in, "out_features": n_out,
                           "component": site.component, "role": site.role})
    if not rec.modules:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in rec.skipped[:6]) or "no linear layers found"
        raise NoEffectError(f"{spec.summary()} factorised no module ({reasons}).")
    rec.notes.append("factorised modules have new state-dict keys (.first/.second): from_pretrained cannot reload "
                     "them into the original architecture")
    return model, rec.finish(model, f"{spec.summary()}: {len(rec.modules)} linears factorised, "
                                    f"{rec.params_before:,} -> {count_params(model):,} params")
