"""Where things are in a Hugging Face model, named the way the planner names them.

Every step needs the same facts: the stacks of transformer blocks, which linear-like module belongs to
attention or the MLP (and which role it plays: q, k, v, fused qkv, o, gate, up, fused gate_up, down),
which one is the output head. :class:`ModelLayout` finds them by what the modules compute, not by
their class: any module computing ``x W^T + b`` (``nn.Linear`` and subclasses, transformers'
``Conv1D``, bitsandbytes layers; see :mod:`executors.steps.linears`) inside a block is a site.

Each site is mapped to the planner's :class:`~planner.models.spec.ParamGroup` (built from the model's
own config), so the executors and :func:`planner.models.derive.derive_spec` classify modules
identically. The mapping matches the group's module path relative to a block (``attn.c_attn``,
``SelfAttention.q``) against the site's path inside its block.

Execution does not depend on the planner knowing the architecture: for a ``model_type`` the planner
cannot describe, ``spec`` is None (``spec_error`` says why), blocks are found as the outermost lists of
identical modules holding linear-like modules, and sites are classified from their path (attention
vs MLP); roles stay unknown, so steps that need them (structural pruning, derived students) refuse up
front with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from planner.errors import FitplanError, UnsupportedError
from planner.models.spec import ModelSpec, ParamGroup
from executors.steps.linears import as_linear, features, is_linear_like, linear_like  # noqa: F401 (re-export)

_ATTENTION_WORDS = re.compile(r"attn|attention", re.IGNORECASE)
_ROUTER_WORDS = re.compile(r"^(router|gate)$")
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass(frozen=True)
class LinearSite:
    """A linear-like module of the model and what it is.

    ``layer`` is the block index within its stack (``stack``: the stack's module path; an
    encoder-decoder model has two); None outside the blocks. ``basis`` says how the component was
    found: 'planner' (a ParamGroup of the model's spec) or 'path' (module path words, no spec group).
    """

    name: str
    module: nn.Module
    layer: int | None
    group: ParamGroup | None
    component: str
    role: str | None
    stack: str | None = None
    basis: str = "planner"

    @property
    def in_features(self) -> int:
        return features(self.module)[0]

    @property
    def out_features(self) -> int:
        return features(self.module)[1]


class ModelLayout:
    """Block stacks, linear-like modules and embeddings of one model, classified through the planner's spec."""

    def __init__(self, model: nn.Module):
        self.model = model
        try:
            self.spec: ModelSpec | None = model_spec(model)
            self.spec_error: str | None = None
        except (FitplanError, KeyError, TypeError) as error:  # a config the planner cannot read is not fatal
            self.spec, self.spec_error = None, f"{type(error).__name__}: {error}"
        self.stacks = _find_stacks(model, self.spec)
        self.blocks_path, self.blocks = self.stacks[-1] if self.spec is None or self.spec.architecture != \
            "encoder-decoder" else self.stacks[0]
        self._prefixes = {path: _group_prefix(path, self.spec) for path, _ in self.stacks}
        self._groups = {g.name: g for g in self.spec.param_groups if g.kind == "linear"} if self.spec else {}
        head = self.output_embeddings
        self._head_name = self.module_name(head) if head is not None else None

    @property
    def architecture(self) -> str:
        """'decoder', 'encoder' or 'encoder-decoder' (from the spec, else from the model class)."""
        if self.spec is not None:
            return self.spec.architecture
        config = getattr(self.model, "config", None)
        if getattr(config, "is_encoder_decoder", False):
            return "encoder-decoder"
        return "decoder" if type(self.model).__name__.endswith(_CAUSAL_SUFFIXES) else "encoder"

    @property
    def model_type(self) -> str:
        return str(getattr(getattr(self.model, "config", None), "model_type", type(self.model).__name__))

    @property
    def num_layers(self) -> int:
        """Blocks of the main stack."""
        return len(self.blocks)

    def require_spec(self, what: str) -> ModelSpec:
        """The planner's spec, or an UnsupportedError saying ``what`` needs it."""
        if self.spec is None:
            raise UnsupportedError(f"{what} rewrites the model's config and needs the planner's description of "
                                   f"model_type {self.model_type!r}, which it does not have ({self.spec_error}). "
                                   f"Unstructured/N:M pruning, low-rank and quantization run on any model.")
        return self.spec

    def block_prefix(self, index: int) -> str:
        return f"{self.blocks_path}.{index}."

    def locate(self, name: str) -> tuple[str | None, int | None, ParamGroup | None]:
        """Stack path, block index and planner group of the module at ``name``."""
        for path, _ in self.stacks:
            prefix = path + "."
            if not name.startswith(prefix):
                continue
            index_text, _, rest = name[len(prefix):].partition(".")
            if index_text.isdigit():
                return path, int(index_text), self._match_group(self._prefixes[path], rest)
        if name == self._head_name:
            return None, None, self._groups.get("lm_head")
        return None, None, self._groups.get(_outside_group_name(name, self._groups))

    def _match_group(self, prefix: str, rest: str) -> ParamGroup | None:
        """The group whose path inside a block is ``rest``, a suffix of it (T5 ``layer.0.SelfAttention.q``)
        or an ancestor of it (a factorised ``q_proj.first`` belongs to ``q_proj``)."""
        candidate = rest
        while candidate:
            best = None
            for name, group in self._groups.items():
                if not name.startswith(prefix):
                    continue
                suffix = name[len(prefix):]
                if (candidate == suffix or candidate.endswith("." + suffix)) and \
                        (best is None or len(suffix) > len(best[0])):
                    best = (suffix, group)
            if best is not None:
                return best[1]
            candidate = candidate.rpartition(".")[0]
        return None

    def linear_sites(self) -> list[LinearSite]:
        """Every linear-like module (dense or already quantized), classified."""
        sites = []
        for name, module in self.model.named_modules():
            if not is_linear_like(module) or _inside_linear(name, sites):
                continue
            stack, layer, group = self.locate(name)
            if group is not None:
                sites.append(LinearSite(name, module, layer, group, group.component, group.role, stack))
            elif layer is not None:
                sites.append(LinearSite(name, module, layer, None, _component_from_path(name), None, stack, "path"))
            else:
                component = "lm_head" if name == self._head_name else "other"
                sites.append(LinearSite(name, module, None, None, component, None, None, "path"))
        return sites

    def block_linears(self, components: tuple[str, ...] = ("attention", "mlp")) -> list[LinearSite]:
        """Linear-like modules inside the transformer blocks whose component is in ``components``."""
        return [s for s in self.linear_sites() if s.layer is not None and s.component in components]

    def expert_weights(self) -> list[str]:
        """Paths of the 3-D expert weight tensors in the blocks (transformers 5 fuses each MoE layer's
        experts into ``experts x out x in`` parameters such as ``mlp.experts.gate_up_proj``)."""
        return [f"{path}.{name}" for path, blocks in self.stacks for name, param in blocks.named_parameters()
                if param.dim() == 3 and param.is_floating_point() and "expert" in name.lower()]

    def expert_matrices(self, path: str) -> list[torch.Tensor]:
        """The ``out x in`` matrix of each expert in the 3-D tensor at ``path`` (views of it)."""
        tensor = self.model.get_parameter(path)
        leaf = path.rpartition(".")[2]
        hidden = getattr(self.spec, "hidden_size", None) or getattr(self.model.config, "hidden_size", None)
        # (experts, out, in) is transformers' convention; a family storing (experts, in, out) shows it by
        # having the hidden size where the input of an up projection / the output of down should not be
        transposed = (("down" in leaf and tensor.shape[-1] == hidden != tensor.shape[-2]) or
                      ("down" not in leaf and tensor.shape[-2] == hidden != tensor.shape[-1]))
        return [tensor[e].t() if transposed else tensor[e] for e in range(tensor.shape[0])]

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
    """The planner's spec of ``model``, built from its live config (a FitplanError if it cannot be)."""
    config = model.config.to_dict()
    return ModelSpec.from_config(config, name=config.get("_name_or_path") or config.get("model_type"),
                                 source="executor")


def _inside_linear(name: str, sites: list[LinearSite]) -> bool:
    """Whether ``name`` is a child of an already listed site (bitsandbytes/linear wrappers hold a Linear)."""
    return any(name.startswith(site.name + ".") for site in sites[-4:])


def _component_from_path(name: str) -> str:
    leaf = name.rpartition(".")[2]
    if _ATTENTION_WORDS.search(name):
        return "attention"
    if _ROUTER_WORDS.match(leaf):
        return "router"
    return "mlp"


def _outside_group_name(name: str, groups: dict[str, ParamGroup]) -> str | None:
    """Groups outside the blocks (pooler.dense, project_in) by the end of their path."""
    for group_name in groups:
        if not group_name.startswith(("layers.", "encoder.layers.")) and (name == group_name or
                                                                          name.endswith("." + group_name)):
            return group_name
    return None


def _group_prefix(stack_path: str, spec: ModelSpec | None) -> str:
    if spec is not None and spec.architecture == "encoder-decoder" and stack_path.split(".")[0] == "encoder":
        return "encoder.layers.*."
    return "layers.*."


def _holds_linear(module: nn.Module) -> bool:
    return any(is_linear_like(m) for m in module.modules())


def _find_stacks(model: nn.Module, spec: ModelSpec | None) -> list[tuple[str, nn.ModuleList]]:
    """The block stacks: outermost module lists of identical modules holding linear-like modules."""
    candidates = []
    for name, module in model.named_modules():
        if not name or not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1 or not _holds_linear(module[0]):
            continue
        if any(name.startswith(outer + ".") for outer, _ in candidates):
            continue  # experts inside a block, T5's sub-layers
        candidates.append((name, module))
    if spec is not None:
        wanted = [spec.num_layers] + ([spec.num_encoder_layers] if spec.architecture == "encoder-decoder" else [])
        matching = [(n, m) for n, m in candidates if len(m) in wanted]
        expected = len(wanted)
        if len(matching) != expected:
            found = ", ".join(f"{n} ({len(m)})" for n, m in candidates) or "none"
            raise UnsupportedError(f"cannot find the {' + '.join(map(str, wanted))} transformer blocks of "
                                   f"{type(model).__name__}: module lists of that length: {found}.")
        return matching
    if not candidates:
        raise UnsupportedError(f"cannot find the transformer blocks of {type(model).__name__}: no list of "
                               f"identical modules holding linear layers.")
    return candidates


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name``."""
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)
