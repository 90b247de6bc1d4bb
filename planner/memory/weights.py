"""Weight memory: bytes of every parameter tensor in a format, split per device.

Quantized tensors follow the format's storage formula (``planner.formats.storage``); the parts a
format leaves alone (embeddings, norms, usually lm_head and routers) are stored in its 16-bit dtype.
Engine facts that change what is resident: LitGPT and the fine-grained FP8 loader hold a separate
lm_head for tied-embedding models; Lightning's bitsandbytes plugin also quantizes lm_head; llama.cpp
stores a tied model's token_embd in the output tensor's type. Per device: tensor parallel shards
(``planner.memory.parallel.shard_fraction``), pipeline stages hold their layers plus the embeddings
(first stage) or final norm and lm_head (last stage), whichever is larger.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.formats import WeightFormat, get_format
from planner.formats.storage import GroupStorage, group_storage
from planner.memory.engines import EngineProfile, get_engine
from planner.memory.parallel import layer_fraction, shard_fraction
from planner.models.spec import ModelSpec, ParamGroup


@dataclass(frozen=True)
class WeightBytes:
    """Weight bytes of one model in one format: totals and the most loaded device."""

    quantized: float
    unquantized: float
    total_all_devices: float
    largest_quantized_tensor_params: int
    resident_tensors: int
    allocator_waste: float
    groups: tuple[GroupStorage, ...]
    separate_lm_head: bool

    @property
    def total(self) -> float:
        return self.quantized + self.unquantized


_MIB = 2**20


def segment_waste(tensor_bytes: float, count: int) -> float:
    """Bytes the PyTorch caching allocator reserves beyond ``count`` tensors of ``tensor_bytes`` each.

    CUDACachingAllocator.cpp: requests up to 1 MiB share 2 MiB segments (kSmallBuffer), requests up
    to 10 MiB share 20 MiB segments (kLargeBuffer), larger ones get their own segment rounded up to
    2 MiB (kRoundLarge); every block is rounded to 512 bytes (kMinBlockSize).
    """
    size = max(512.0, -(-tensor_bytes // 512) * 512)
    if size > 10 * _MIB:
        return count * (-(-size // (2 * _MIB)) * 2 * _MIB - tensor_bytes)
    segment = 2 * _MIB if size <= _MIB else 20 * _MIB
    per_segment = max(1, int(segment // size))
    segments = -(-count // per_segment)
    return segments * segment - count * tensor_bytes


def _resident_groups(spec: ModelSpec, fmt: WeightFormat, engine: EngineProfile) -> tuple[list[ParamGroup], bool]:
    groups = list(spec.param_groups)
    untie = spec.tie_word_embeddings and spec.architecture != "encoder" and (
        engine.unties_tied_embeddings or (fmt.unties_tied_lm_head and engine.name == "hf"))
    if untie:
        width = spec.embeddings.projection_dim or spec.hidden_size
        groups.append(ParamGroup(name="lm_head", component="lm_head", kind="linear", role="lm_head",
                                 params_each=width * spec.vocab_size, count=1, in_features=width,
                                 out_features=spec.vocab_size))
    return groups, untie


def weight_bytes(spec: ModelSpec, precision: str | WeightFormat = "bf16", *, engine: str | EngineProfile = "hf",
                 tp: int = 1, pp: int = 1) -> WeightBytes:
    """Bytes of the weights of ``spec`` in ``precision`` on the most loaded of ``tp * pp`` devices."""
    fmt = get_format(precision)
    profile = get_engine(engine)
    groups, untied = _resident_groups(spec, fmt, profile)
    quantize_head = profile.quantizes_lm_head and fmt.family in ("bnb",)
    stored = [group_storage(spec, fmt, g, quantize_lm_head=quantize_head) for g in groups]
    quantized = unquantized = total = 0.0
    first_extra, last_extra = [0.0, 0.0], [0.0, 0.0]
    largest = 0
    tensors = 0
    waste = 0.0
    stage = layer_fraction(spec, pp)
    for item in stored:
        group = item.group
        total += item.bytes
        share = item.bytes * shard_fraction(spec, group, tp)
        slot = 0 if item.quantized else 1
        if group.layers or pp == 1:
            amount = share * (stage if group.layers else 1.0)
            if item.quantized:
                quantized += amount
            else:
                unquantized += amount
        elif group.component in ("embeddings",) or group.name.startswith("encoder"):
            first_extra[slot] += share
        else:
            last_extra[slot] += share
        if item.quantized and group.kind == "linear":
            largest = max(largest, group.params_each)
        tensors += group.count
        waste += segment_waste(item.bytes / group.count, group.count) * (stage if group.layers else 1.0) \
            * shard_fraction(spec, group, tp)
    if pp > 1:
        extra = first_extra if sum(first_extra) >= sum(last_extra) else last_extra
        quantized += extra[0]
        unquantized += extra[1]
    return WeightBytes(quantized=quantized, unquantized=unquantized, total_all_devices=total,
                       largest_quantized_tensor_params=largest, resident_tensors=tensors, allocator_waste=waste,
                       groups=tuple(stored), separate_lm_head=untied)
