"""Pruning: zero single weights (unstructured, N:M) or cut structure (heads, FFN channels, whole layers).

Unstructured and N:M pruning act on the Linear layers of the transformer blocks; embeddings, the output
head and modules outside the blocks (BERT's pooler) stay dense, as in Wanda and SparseGPT, and the report
says so. Zeros are written into the weights (permanent, no masks or hooks), so the dense kernels run as
before: on CPU neither memory nor speed changes (PyTorch's 2:4 kernels are CUDA-only); the report gives
the exact storage the N:M weights would take in a sparse format. Structured pruning shrinks tensors (see
:mod:`executors.steps.structured`) to the sizes :func:`planner.models.derive.derive_spec` predicts.

Every run goes through :class:`~executors.steps.gradual.GradualPruningScheduler`: ``gradual_steps=1`` is
one-shot pruning; more steps raise the level gradually, with ``finetune_steps`` of training in between
(causal LMs: next-token loss; encoders: cosine to the embeddings of the unpruned model) and the
``max_quality_drop`` stop rule.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from planner.errors import InvalidRequestError
from planner.models.derive import (
    check_structural_effect,
    check_structured_support,
    ffn_alignment,
    kept_ffn_width,
    kept_by_influence,
    kept_kv_groups,
    kept_layer_count,
)
from planner.models.spec import ModelSpec
from planner.strategy import CompressionStrategy, SparsitySpec
from executors.steps import register_step
from executors.steps._recorder import Recorder
from executors.steps.context import StepContext
from executors.steps.gradual import GradualPruningScheduler
from executors.steps.layout import ModelLayout
from executors.steps.linears import features, is_dense, is_linear_like, weight_matrix
from executors.steps.masks import (
    global_prune_masks,
    input_norms,
    layer_prune_mask,
    nm_prune_mask,
    row_prune_mask,
)
from executors.steps.report import NoEffectError, StepReport
from executors.steps.storage import (
    bitmask_sparse_bytes,
    count_params,
    count_zeros,
    semi_structured_bytes,
    state_dict_bytes,
)
from executors.steps.structured import block_influence, keep_blocks, keep_ffn_channels, keep_head_groups
from executors.steps.training import adamw, embedding_loss, endless, keep_zeros, last_hidden, next_token_loss, train_steps

_PRUNABLE_COMPONENTS = ("attention", "mlp", "experts", "shared_experts")


@register_step(SparsitySpec)
def prune(model: nn.Module, spec: SparsitySpec, context: StepContext,
          strategy: CompressionStrategy) -> tuple[nn.Module, StepReport]:
    if spec.pattern in ("2:4", "4:8") and spec.gradual_steps > 1:
        raise InvalidRequestError(f"pattern {spec.pattern} has a fixed level of 0.5; gradual_steps must be 1 "
                                  f"(got {spec.gradual_steps}).")
    rec = Recorder("sparsity", spec, model)
    before = _linear_snapshot(model)
    if spec.structured:
        pruner: Any = _StructuredPruner(model, spec, strategy, context, rec)
    else:
        pruner = _WeightPruner(model, spec, context, rec)
    scored = spec.gradual_steps > 1 or spec.max_quality_drop is not None
    scheduler = GradualPruningScheduler(
        pruner, target_level=spec.level, steps=spec.gradual_steps,
        evaluator=context.evaluator if scored else None, max_quality_drop=spec.max_quality_drop,
        finetune=_Finetuner(model, spec, context) if spec.finetune_steps else None)
    result = scheduler.run(model)
    model = result.model

    rec.history = result.history
    rec.metrics["level_reached"] = result.level
    if result.baseline_quality is not None:
        rec.metrics["quality_before"] = result.baseline_quality
        rec.metrics["quality_after"] = result.quality
    if result.stopped:
        rec.notes.append(result.stopped)
    if spec.structured:
        pruner.settle(result.level)  # a level the stop rule rejected was undone: its kept units too
        rec.structure.update(pruner.structure())
        if spec.pattern == "layers":
            earlier = context.kept_layers  # a derived student's blocks, numbered in the original model
            context.kept_layers = [earlier[i] for i in pruner.kept_layers] if earlier else list(pruner.kept_layers)
    else:
        rec.storage.update(pruner.storage(model))
        rec.notes.append("zeros are stored densely and multiplied by dense kernels: memory and speed unchanged on "
                         "CPU (PyTorch's sparse semi-structured kernels are CUDA-only)")
    _record_changes(rec, before, _linear_snapshot(model))
    _check_effect(rec, spec, pruner, model, result)
    experts = f" and {len(pruner.experts)} expert tensors" if not spec.structured and pruner.experts else ""
    achieved = "" if spec.structured else (f", {rec.metrics['sparsity_achieved']:.1%} of the {pruner.targeted(model):,} "
                                           f"weights of {len(pruner.names)} block linears{experts} zero")
    return model, rec.finish(model, f"{spec.summary()}: level {result.level:g} reached{achieved}, "
                                    f"{rec.params_before:,} -> {count_params(model):,} params, {rec.zeros_before:,} -> "
                                    f"{count_zeros(model):,} zeros")


class _WeightPruner:
    """Zeros single weights of the block Linears (magnitude or Wanda; per layer, global or N:M)."""

    def __init__(self, model: nn.Module, spec: SparsitySpec, context: StepContext, rec: Recorder):
        if spec.method == "wanda" and spec.scope == "global":
            raise InvalidRequestError("Wanda compares weights within each output row; scope 'global' applies to "
                                      "magnitude pruning only. Use scope='per-layer'.")
        self.spec = spec
        self.context = context
        layout = ModelLayout(model)
        self.nm = tuple(int(x) for x in spec.pattern.split(":")) if ":" in spec.pattern else None
        self.names = []
        self.blocks = layout.num_layers
        self.ratios: dict[str, float] = {}
        """module or expert path -> its block's level over ``spec.level`` (``block_levels``; absent: 1)"""
        for site in layout.linear_sites():
            reason = self._skip_reason(site) or self._dense_block(site.name, site.layer, site.component)
            if reason:
                rec.skip(site.name, reason)
            else:
                self.names.append(site.name)
        self.experts = []
        for path in layout.expert_weights():
            if spec.method == "wanda":
                rec.skip(path, "fused expert tensor: Wanda's input norms are per module, not per routed expert; "
                               "kept dense (use magnitude pruning)")
            elif self.nm and layout.expert_matrices(path)[0].shape[1] % self.nm[1]:
                rec.skip(path, f"expert input width is not a multiple of {self.nm[1]} ({spec.pattern})")
            elif reason := self._dense_block(path, layout.locate(path.rpartition(".")[0])[1], "experts"):
                rec.skip(path, reason)
            else:
                self.experts.append(path)
        rec.skip(layout.module_name(layout.input_embeddings), "token embeddings are looked up, not multiplied: "
                                                              "not pruned")
        self.calibration = context.calibration("Wanda pruning") if spec.method == "wanda" else None

    def _skip_reason(self, site) -> str | None:
        if site.layer is None:
            return ("output head kept dense (as in Wanda/SparseGPT)" if site.component == "lm_head"
                    else "outside the transformer blocks: kept dense")
        if site.component not in _PRUNABLE_COMPONENTS:
            return f"component {site.component} kept dense"
        if not is_dense(site.module):
            return f"already quantized ({type(site.module).__name__})"
        if self.nm and site.in_features % self.nm[1]:
            return f"in_features {site.in_features} is not a multiple of {self.nm[1]} ({self.spec.pattern})"
        return None

    def _dense_block(self, name: str, layer: int | None, component: str) -> str | None:
        """Record the level ratio of a block Linear under ``block_levels`` (addressed by the block's index in
        the original model, as ``block_formats`` are: ``StepContext.kept_layers`` after a depth change);
        the reason it stays dense when its block's level is 0."""
        if not self.spec.block_levels or layer is None:
            return None
        kept = self.context.kept_layers
        original = kept[layer] if kept and layer < len(kept) else layer
        group = "attention" if component == "attention" else "mlp"
        block_level = self.spec.block_level(original, group)
        if block_level == 0:
            return f"block_levels: block {original} {group} at level 0 (kept dense)"
        self.ratios[name] = block_level / self.spec.level
        return None

    def level_of(self, name: str, level: float) -> float:
        """The level one targeted tensor is pruned to when the step's schedule is at ``level`` (an expert
        matrix ``path[e]`` follows its tensor's block)."""
        return min(level * self.ratios.get(name.partition("[")[0], 1.0), 1.0)

    def target(self, model: nn.Module, level: float) -> float:
        """Share of the targeted weights that must be zero at ``level`` (per-block levels weighted by size)."""
        if self.nm:
            return 0.5
        sizes = [(n, model.get_submodule(n).weight.numel()) for n in self.names]
        sizes += [(p, model.get_parameter(p).numel()) for p in self.experts]
        total = sum(size for _, size in sizes)
        return sum(self.level_of(n, level) * size for n, size in sizes) / total if total else level

    def __call__(self, model: nn.Module, level: float) -> nn.Module:
        modules = {name: model.get_submodule(name) for name in self.names}
        weights = {name: weight_matrix(module) for name, module in modules.items()}
        layout = ModelLayout(model) if self.experts else None
        for path in self.experts:  # each expert's matrix is pruned like a Linear of its own
            weights.update({f"{path}[{e}]": m for e, m in enumerate(layout.expert_matrices(path))})
        scores = {name: weight.detach().abs().float() for name, weight in weights.items()}
        if self.spec.method == "wanda":
            norms = input_norms(model, modules, self.calibration, self.context.device)
            scores = {name: score * norms[name][None, :] for name, score in scores.items()}
        if self.nm:
            masks = {name: nm_prune_mask(score, *self.nm) for name, score in scores.items()}
        elif self.spec.scope == "global":
            masks = dict(zip(scores, global_prune_masks(list(scores.values()), level)))
        elif self.spec.method == "wanda":
            masks = {name: row_prune_mask(score, self.level_of(name, level)) for name, score in scores.items()}
        else:
            masks = {name: layer_prune_mask(score, self.level_of(name, level)) for name, score in scores.items()}
        with torch.no_grad():
            for name, mask in masks.items():
                weights[name].masked_fill_(mask, 0)  # views: Conv1D's (in, out) weight and expert slices too
        return model

    def _tensors(self, model: nn.Module) -> list[torch.Tensor]:
        return [model.get_submodule(n).weight for n in self.names] + [model.get_parameter(p) for p in self.experts]

    def targeted(self, model: nn.Module) -> int:
        return sum(t.numel() for t in self._tensors(model))

    def achieved(self, model: nn.Module) -> float:
        """Fraction of exact zeros in the targeted weights."""
        tensors = self._tensors(model)
        total = sum(t.numel() for t in tensors)
        return sum(int((t == 0).sum()) for t in tensors) / total if total else 0.0

    def storage(self, model: nn.Module) -> dict[str, int]:
        """Exact storage of the pruned weights, dense vs an N:M sparse format (16-bit and int8 values)."""
        if not self.nm:
            return {}
        dense16 = sparse16 = sparse8 = 0
        shapes = [weight_matrix(model.get_submodule(name)).shape for name in self.names]
        layout = ModelLayout(model) if self.experts else None
        shapes += [m.shape for path in self.experts for m in layout.expert_matrices(path)]
        for rows, cols in shapes:
            dense16 += rows * cols * 2
            if self.nm == (2, 4):
                sparse16 += semi_structured_bytes(rows, cols, 2)
                sparse8 += semi_structured_bytes(rows, cols, 1)
            else:
                sparse16 += bitmask_sparse_bytes(rows, cols, 0.5, 2)
                sparse8 += bitmask_sparse_bytes(rows, cols, 0.5, 1)
        basis = "semi_structured" if self.nm == (2, 4) else "bitmask"
        return {"pruned_weights_dense_16bit_bytes": dense16, f"pruned_weights_{basis}_16bit_bytes": sparse16,
                f"pruned_weights_{basis}_int8_bytes": sparse8}


class _StructuredPruner:
    """Removes heads, FFN channels or blocks down to the counts derive.py gives for the original model."""

    def __init__(self, model: nn.Module, spec: SparsitySpec, strategy: CompressionStrategy, context: StepContext,
                 rec: Recorder):
        self.spec = spec
        self.context = context
        what = {"heads": "attention-head pruning", "ffn": "FFN-channel pruning", "layers": "whole-layer pruning"}
        self.original: ModelSpec = ModelLayout(model).require_spec(what[spec.pattern])
        check_structured_support(self.original, spec.pattern)
        check_structural_effect(self.original, spec, strategy)
        self.alignment = ffn_alignment(strategy)
        self.kept_layers = list(range(self.original.num_layers))
        self.kept_groups = [list(range(self.original.num_kv_heads)) for _ in range(self.original.num_layers)]
        self.calibration = context.calibration("whole-layer pruning") if spec.pattern == "layers" else None
        self._kept_at = {0.0: (self.kept_layers, self.kept_groups)}
        if self.alignment > 1 and spec.pattern == "ffn":
            rec.notes.append(f"FFN width rounded to a multiple of {self.alignment} for the later 4-bit step")

    def __call__(self, model: nn.Module, level: float) -> nn.Module:
        layout = ModelLayout(model)
        if self.spec.pattern == "ffn":
            width = kept_ffn_width(self.original.mlp.intermediate_size, 1 - level, self.alignment)
            if width < layout.spec.mlp.intermediate_size:
                keep_ffn_channels(model, layout, width)
        elif self.spec.pattern == "heads":
            groups = kept_kv_groups(self.original.num_kv_heads, level)
            if groups < layout.spec.num_kv_heads:
                kept = keep_head_groups(model, layout, groups)
                self.kept_groups = [[old[i] for i in new] for old, new in zip(self.kept_groups, kept)]
        else:
            count = kept_layer_count(self.original.num_layers, level)
            if count < layout.spec.num_layers:
                influence = block_influence(model, layout, self.calibration, self.context.device)
                keep = kept_by_influence(influence.tolist(), count)
                keep_blocks(model, layout, keep)
                self.kept_layers = [self.kept_layers[i] for i in keep]
        self._kept_at[level] = (self.kept_layers, self.kept_groups)
        return model

    def settle(self, level: float) -> None:
        """Kept layers / head groups as they were at ``level`` (the level the schedule accepted)."""
        self.kept_layers, self.kept_groups = self._kept_at[level]

    def structure(self) -> dict[str, Any]:
        if self.spec.pattern == "layers":
            return {"kept_layers": self.kept_layers}
        if self.spec.pattern == "heads":
            return {"kept_kv_groups_per_layer": self.kept_groups}
        return {}


class _Finetuner:
    """Training between gradual steps; pruned (zero) weights stay zero."""

    def __init__(self, model: nn.Module, spec: SparsitySpec, context: StepContext):
        self.spec = spec
        self.context = context
        self.source = context.require_batches("fine-tuning between pruning steps")
        self.causal = ModelLayout(model).architecture == "decoder"
        self.reference = None if self.causal else copy.deepcopy(model).eval()
        self.consumed = 0
        self.round = 0

    def __call__(self, model: nn.Module) -> list[dict]:
        self.round += 1
        optimizer = adamw([p for p in model.parameters() if p.is_floating_point()], self.spec.finetune_learning_rate)
        batches = endless(self.source, self.context.calibration_batch_size, self.context.calibration_seq_len,
                          skip=self.consumed)
        log: list[dict] = []
        train_steps(model, self._loss(model), batches, optimizer, start=0, stop=self.spec.finetune_steps,
                    device=self.context.device, log_every=max(1, self.spec.finetune_steps // 5), history=log,
                    progress=self.context.progress, description=f"fine-tuning round {self.round}",
                    after_step=keep_zeros(model))
        self.consumed += self.spec.finetune_steps
        return log

    def _loss(self, model: nn.Module):
        if self.causal:
            def loss(ids):
                value = next_token_loss(model(input_ids=ids).logits, ids)
                return value, {"loss": value.item()}
            return loss
        reference = self.reference

        def match(ids):
            with torch.no_grad():
                target = last_hidden(reference, ids)
            return embedding_loss(last_hidden(model, ids), target, "cosine")
        return match


def _linear_snapshot(model: nn.Module) -> dict[str, tuple[int, int, int, tuple[int, ...], int]]:
    """name -> (parameters, zeros, bytes, weight shape out x in, weight zeros) of every dense linear-like module."""
    out = {}
    for name, module in model.named_modules():
        if is_linear_like(module) and is_dense(module):
            params = sum(p.numel() for p in module.parameters())
            zeros = sum(int((p == 0).sum()) for p in module.parameters())
            in_features, out_features = features(module)
            out[name] = (params, zeros, state_dict_bytes(module), (out_features, in_features),
                         int((module.weight == 0).sum()))
    for name, param in model.named_parameters():
        if param.dim() == 3 and param.is_floating_point() and "expert" in name.lower():
            zeros = int((param == 0).sum())
            out[name] = (param.numel(), zeros, param.numel() * param.element_size(), tuple(param.shape), zeros)
    return out


def _check_effect(rec: Recorder, spec: SparsitySpec, pruner, model: nn.Module, result) -> None:  # noqa: ANN001
    """A pruning step that changed no module, or reached less than asked without its stop rule, failed."""
    if not rec.modules:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in rec.skipped[:6]) or "no linear layers found"
        raise NoEffectError(f"{spec.summary()} changed no module ({reasons}).")
    if spec.structured:
        return
    achieved = pruner.achieved(model)
    rec.metrics["sparsity_achieved"] = achieved
    target = pruner.target(model, result.level)
    # per-layer counts round half up; a global mask or N:M hits the count exactly
    if achieved + 0.5 / max(1, min(t.numel() for t in pruner._tensors(model))) < target:
        raise NoEffectError(f"{spec.summary()}: only {achieved:.4f} of the targeted weights are zero, "
                            f"{target:g} requested.")
    if result.level < spec.level and not result.stopped:
        raise NoEffectError(f"{spec.summary()}: level {result.level:g} reached, {spec.level:g} requested.")


def _record_changes(rec: Recorder, before: dict, after: dict) -> None:
    for name, (params, zeros, size, shape, _) in before.items():
        if name not in after:
            rec.change(name=name, action="removed", params_before=params, params_after=0, zeros_before=zeros,
                       bytes_before=size, bytes_after=0, detail={"shape_before": list(shape)})
            continue
        params2, zeros2, size2, shape2, weight_zeros = after[name]
        if (params2, zeros2, shape2) == (params, zeros, shape):
            continue
        if shape2 == shape:
            action = f"weight {weight_zeros / math.prod(shape):.1%} zeros"
        else:
            action = f"shape {list(shape)} -> {list(shape2)}"
        rec.change(name=name, action=action, params_before=params, params_after=params2, zeros_before=zeros,
                   zeros_after=zeros2, bytes_before=size, bytes_after=size2,
                   detail={"shape_before": list(shape), "shape_after": list(shape2)})
