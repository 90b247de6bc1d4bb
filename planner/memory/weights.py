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


def allocator_waste(tensor_sizes: dict[float, float]) -> float:
    """Bytes the PyTorch caching allocator reserves beyond resident tensors (``{bytes: count}``).

    CUDACachingAllocator.cpp: requests above 10 MiB get their own segment rounded up to 2 MiB
    (kRoundLarge); requests of 1-10 MiB are carved from 20 MiB segments (kLargeBuffer, tensors of one
    size packed together); smaller ones share 2 MiB segments (kSmallBuffer). Blocks are rounded to
    512 bytes (kMinBlockSize).
    """
    large = medium_used = small = 0.0
    medium_segments = 0
    for size, count in tensor_sizes.items():
        rounded = max(512.0, -(-size // 512) * 512)
        if rounded > 10 * _MIB:
            large += count * (-(-rounded // (2 * _MIB)) * 2 * _MIB - size)
        elif rounded > _MIB:
            medium_segments += -(-count // max(1, int(20 * _MIB // rounded)))
            medium_used += count * size
        else:
            small += count * rounded
    small_waste = -(-small // (2 * _MIB)) * 2 * _MIB - small if small else 0.0
    return large + (medium_segments * 20 * _MIB - medium_used) + small_waste


def _add_tensor_sizes(sizes: dict[float, float], item: GroupStorage, spec: ModelSpec, tp: int, share: float) -> None:
    """Record the resident tensors of one group: weight and bias are separate allocations; MoE experts
    are one 3-D parameter per layer in current transformers (GptOssExperts, ...)."""
    group = item.group
    fraction = shard_fraction(spec, group, tp)
    pieces = len(group.layers) if group.component == "experts" and group.layers else group.count
    each = item.bytes / pieces * fraction
    bytes_per_param = item.bytes / group.params if group.params else 0.0
    bias = (group.out_features or 0) * fraction * bytes_per_param if group.bias and group.kind == "linear" else 0.0
    count = pieces * share
    if bias:
        sizes[bias] = sizes.get(bias, 0.0) + count
    sizes[each - bias] = sizes.get(each - bias, 0.0) + count


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
    sizes: dict[float, float] = {}
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
        _add_tensor_sizes(sizes, item, spec, tp, stage if group.layers else 1.0)
    if pp > 1:
        extra = first_extra if sum(first_extra) >= sum(last_extra) else last_extra
        quantized += extra[0]
        unquantized += extra[1]
    return WeightBytes(quantized=quantized, unquantized=unquantized, total_all_devices=total,
                       largest_quantized_tensor_params=largest, resident_tensors=tensors,
                       allocator_waste=allocator_waste(sizes),
                       groups=tuple(stored), separate_lm_head=untied)
