"""Where things are in a Hugging Face model, named the way the planner names them.

Every step needs the same facts: the list of transformer blocks, which Linear belongs to attention or
the MLP, which one is the output head. Instead of guessing from module names, :class:`ModelLayout`
maps each module to the planner's :class:`~planner.models.spec.ParamGroup` (built from the model's own
config), so the executors and :func:`planner.models.derive.derive_spec` classify modules identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from planner.errors import UnsupportedError
from planner.models.spec import ModelSpec, ParamGroup


@dataclass(frozen=True)
class LinearSite:
    """A Linear-like module of the model and what it is."""

    name: str
    module: nn.Module
    layer: int | None
    group: ParamGroup | None
    component: str
    role: str | None


class ModelLayout:
    """Blocks, linears and embeddings of one model, classified through the planner's spec."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.spec = model_spec(model)
        self.blocks_path, self.blocks = _find_blocks(model, self.spec.num_layers)
        self._groups = {g.name: g for g in self.spec.param_groups}
        head = self.output_embeddings
        self._head_name = self.module_name(head) if head is not None else None

    @property
    def architecture(self) -> str:
        return self.spec.architecture

    def block_prefix(self, index: int) -> str:
        return f"{self.blocks_path}.{index}."

    def locate(self, name: str) -> tuple[int | None, ParamGroup | None]:
        """Block index and planner group of the module at ``name``."""
        prefix = self.blocks_path + "."
        if name.startswith(prefix):
            index_text, _, rest = name[len(prefix):].partition(".")
            if index_text.isdigit():
                # A factorised Linear (q_proj.first / q_proj.second) belongs to the group of its parent.
                while rest and f"layers.*.{rest}" not in self._groups and "." in rest:
                    rest = rest.rpartition(".")[0]
                return int(index_text), self._groups.get(f"layers.*.{rest}")
        if name == self._head_name:
            return None, self._groups.get("lm_head")
        return None, None

    def linear_sites(self, kinds: tuple[type, ...] = (nn.Linear,)) -> list[LinearSite]:
        sites = []
        for name, module in self.model.named_modules():
            if not isinstance(module, kinds):
                continue
            layer, group = self.locate(name)
            component = group.component if group is not None else "other"
            sites.append(LinearSite(name, module, layer, group, component, group.role if group else None))
        return sites

    def block_linears(self, components: tuple[str, ...] = ("attention", "mlp")) -> list[LinearSite]:
        """Linear modules inside the transformer blocks whose component is in ``components``."""
        return [s for s in self.linear_sites() if s.layer is not None and s.component in components]

    @property
    def input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    @property
    def output_embeddings(self) -> nn.Module | None:
        getter = getattr(self.model, "get_output_embeddings", None)
        return getter() if getter is not None else None

    @property
    def tied(self) -> bool:
        """Whether the output head shares its weight tensor with the input embeddings."""
        head = self.output_embeddings
        if head is None or not hasattr(head, "weight"):
            return False
        return head.weight is self.input_embeddings.weight

    def module_name(self, module: nn.Module) -> str:
        for name, candidate in self.model.named_modules():
            if candidate is module:
                return name
        raise LookupError("module is not part of the model")


def model_spec(model: nn.Module) -> ModelSpec:
    """The planner's spec of ``model``, built from its live config."""
    config = model.config.to_dict()
    return ModelSpec.from_config(config, name=config.get("_name_or_path") or config.get("model_type"),
                                 source="executor")


def _find_blocks(model: nn.Module, num_layers: int) -> tuple[str, nn.ModuleList]:
    candidates = [(name, module) for name, module in model.named_modules()
                  if isinstance(module, nn.ModuleList) and len(module) == num_layers and name]
    if len(candidates) != 1:
        found = ", ".join(f"{n} ({len(m)})" for n, m in candidates) or "none"
        raise UnsupportedError(f"cannot find the {num_layers} transformer blocks of {type(model).__name__}: "
                               f"module lists of that length: {found}.")
    return candidates[0]


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name``."""
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)


def linear_like(source: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A new ``nn.Linear`` holding ``weight`` (out x in) and ``bias``, on ``source``'s device and dtype."""
    out_features, in_features = weight.shape
    layer = nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
    layer.weight = nn.Parameter(weight.detach().clone().to(source.weight.dtype),
                                requires_grad=source.weight.requires_grad)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().clone().to(source.weight.dtype),
                                  requires_grad=source.weight.requires_grad)
    layer.train(source.training)
    return layer
