"""Run modes for a model that does not fit in GPU memory: part (or all) of it in host RAM.

Four ways engines run a model larger than the GPU, each with the memory it needs on the GPU and in
RAM, and its decode speed:

- ``ngl`` (llama.cpp ``-ngl N``): the first N repeating layers (weights and their KV cache) on the GPU,
  the rest computed by the CPU from RAM. Step time = GPU part + CPU part (layers run in order).
- ``moe-cpu`` (llama.cpp ``-ot exps=CPU``, MoE models): every tensor but the routed experts on the GPU,
  the experts in RAM, computed by the CPU; a step reads only the experts its tokens route to.
- ``device-map`` (transformers + accelerate ``device_map="auto"`` with ``max_memory`` for cpu): the
  layers that do not fit stay in RAM and are copied to the GPU in every forward (accelerate
  big-model inference: "weights offloaded to the CPU are put on the GPU when needed"), so each step
  also moves them over PCIe; the KV cache stays on the GPU. 16-bit weights only (bitsandbytes
  quantized layers do not offload).
- ``cpu-only`` (llama.cpp without a GPU): everything in RAM.

Speed: the GPU part is the step-time formula of ``planner.speed.step`` on the bytes and FLOPs the GPU
keeps; the part in RAM is memory-bound, ``bytes read per step / (host bandwidth x efficiency)``; the
PCIe copies of ``device-map`` take ``bytes / (link bandwidth x efficiency)``. Links and host
bandwidth come from ``planner/data/offload.toml`` (a source per figure), the PCIe generation of a GPU
from its catalog ``interconnect``. On a GPU without a bandwidth in the catalog (a capacity such as
"16GB") the GPU part is unknown and the speed is an upper bound (the RAM part alone), flagged.
Among a mode's formats the choice follows ``planner.sizing.recommend`` (RAM headroom, then quality,
then speed).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from functools import cache
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hardware_db import Accelerator
from hardware_db._generic import parse_capacity_gib
from planner._data import read_data_toml
from planner.errors import InvalidRequestError
from planner.formats import get_format
from planner.memory.api import MAX_BATCH, MAX_TOKENS, _positive_int
from planner.memory.devices import format_support, resolve_gpu
from planner.sizing.recommend import loss_of, recommended
from planner.sizing.table import GIB, FitTable, _cached_table

Mode = Literal["ngl", "moe-cpu", "device-map", "cpu-only"]
MODES: dict[str, str] = {
    "ngl": "llama.cpp partial offload (-ngl): first layers on the GPU, the rest on the CPU",
    "moe-cpu": "llama.cpp MoE experts on the CPU (-ot exps=CPU), the rest on the GPU",
    "device-map": "transformers + accelerate device_map: layers in RAM copied to the GPU every step",
    "cpu-only": "llama.cpp on the CPU only",
}
LLAMACPP_FORMATS = ("gguf-f16", "gguf-q8_0", "gguf-q6_k", "gguf-q5_k_m", "gguf-q4_k_m", "gguf-q4_0", "gguf-q3_k_m",
                    "gguf-q2_k")
DEVICE_MAP_FORMATS = ("bf16", "fp16")
MAX_GPUS = 64


class HostLinks(BaseModel):
    """The host side of an offloaded run: RAM, its bandwidth and the GPU's PCIe link (each with a source)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ram_gib: float = Field(description="RAM the user gave")
    usable_ram_gib: float = Field(description="ram_gib minus the reserve for the OS and the engine process")
    reserved_gib: float
    host_bandwidth_gbps: float
    host_efficiency: float
    pcie_gen: str
    pcie_gbps: float = Field(description="one direction of the GPU's link (x16 scaled by lanes)")
    pcie_efficiency: float
    sources: dict[str, str]


class OffloadMode(BaseModel):
    """One way to run ``model`` with part of it in RAM: memory per device and decode speed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    mode: Mode
    description: str
    engine: str
    precision: str
    how: str = Field(description="the engine setting, e.g. '-ngl 20'")
    gpu_layers: int = Field(description="repeating layers whose weights live on the GPU(s)")
    layers: int
    gpu_gib: float = Field(description="safe bound of the memory on each GPU (0 for cpu-only)")
    host_gib: float = Field(description="model memory in RAM")
    fits: bool = Field(description="gpu_gib <= usable GPU memory and host_gib <= usable RAM")
    decode_tok_s: float | None = Field(description="decode tokens/s of the batch (an upper bound when "
                                                   "speed_upper_bound; None: unknown)")
    speed_upper_bound: bool = Field(description="the GPU part is unknown (no bandwidth): the RAM part alone")
    gpu_seconds: float | None
    host_seconds: float
    pcie_seconds: float
    bound_by: str = Field(description="what limits the step: gpu, host RAM or PCIe")
    quality_loss_pct: float | None


@cache
def _data() -> dict[str, Any]:
    return read_data_toml("offload.toml", 1)


def pcie_link(acc: Accelerator) -> tuple[str, float, str]:
    """(generation, GB/s one direction, source) of ``acc``'s host link: from its catalog
    ``interconnect`` ("PCIe 4.0 x16"), else the default generation of ``offload.toml``."""
    data = _data()["pcie"]
    match = re.search(r"PCIe\s*(\d)(?:\.0)?(?:\s*x(\d+))?", acc.interconnect or "")
    gen, lanes, where = data["default_gen"]["value"], 16, data["default_gen"]["source"]
    if match and f"{match.group(1)}.0" in data["gbps"]:
        gen, lanes, where = f"{match.group(1)}.0", int(match.group(2) or 16), f"{acc.name} interconnect: {acc.interconnect}"
    entry = data["gbps"][gen]
    return gen, entry["value"] * min(lanes, 16) / 16, f"{where}; {entry['source']}"


def host_links(acc: Accelerator, ram: Any, host_bandwidth_gbps: float | None = None) -> HostLinks:
    """RAM and link figures for offloading from ``acc`` (``ram``: GB as a number or a string such as '32GB')."""
    data = _data()
    ram_gib = _ram_gib(ram)
    reserved = float(data["host"]["reserved_gib"]["value"])
    if host_bandwidth_gbps is not None:
        if isinstance(host_bandwidth_gbps, bool) or not isinstance(host_bandwidth_gbps, (int, float)) \
                or not math.isfinite(host_bandwidth_gbps) or not 0 < host_bandwidth_gbps <= 20_000:
            raise InvalidRequestError(f"host bandwidth (--host-bandwidth) must be a number of GB/s in (0, 20000]; "
                                      f"got {host_bandwidth_gbps!r}.")
        bandwidth, bw_source = float(host_bandwidth_gbps), "given by the user"
    else:
        bandwidth, bw_source = float(data["host"]["bandwidth_gbps"]["value"]), data["host"]["bandwidth_gbps"]["source"]
    gen, gbps, link_source = pcie_link(acc)
    return HostLinks(ram_gib=ram_gib, usable_ram_gib=max(ram_gib - reserved, 0.0), reserved_gib=reserved,
                     host_bandwidth_gbps=bandwidth, host_efficiency=float(data["host"]["efficiency"]["value"]),
                     pcie_gen=gen, pcie_gbps=gbps, pcie_efficiency=float(data["pcie"]["efficiency"]["value"]),
                     sources={"host_bandwidth": bw_source, "host_efficiency": data["host"]["efficiency"]["source"],
                              "reserved": data["host"]["reserved_gib"]["source"], "pcie": link_source,
                              "pcie_efficiency": data["pcie"]["efficiency"]["source"]})


def _ram_gib(ram: Any) -> float:
    """RAM in GiB from a number of GB or a string ('32GB', '64 GiB'); DIMM "GB" are binary, like GPU memory."""
    if isinstance(ram, bool):
        raise InvalidRequestError(f"RAM (--ram) must be a size such as 32GB; got {ram!r}.")
    if isinstance(ram, (int, float)):
        gib = float(ram)
    elif isinstance(ram, str):
        text = ram.strip()
        try:
            gib = float(text) if re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)", text) else parse_capacity_gib(text)
        except Exception as error:  # CatalogError: zero, negative, absurd sizes
            raise InvalidRequestError(f"RAM (--ram) {ram!r}: {error}.") from None
        if gib is None:
            raise InvalidRequestError(f"RAM (--ram) must be a size such as 32GB or 64GiB; got {ram!r}.")
    else:
        raise InvalidRequestError(f"RAM (--ram) must be a size such as 32GB; got {ram!r}.")
    if not math.isfinite(gib) or not 0 < gib <= 100 * 1024:
        raise InvalidRequestError(f"RAM (--ram) must be a positive size up to 100 TiB; got {ram!r}.")
    return gib


def offload_modes(gpu: Any, ram: Any, models: Iterable[Any], *, gpus: int = 1, context: int = 4096, batch: int = 1,
                  kv_dtype: str | None = None, host_bandwidth_gbps: float | None = None,
                  modes: Iterable[str] | None = None) -> list[OffloadMode]:
    """The run modes of each model with part of it in RAM (one per model and mode: the format chosen by
    the ``recommend`` rule among those that fit), fastest first per model. A mode with no format that
    fits is left out; a mode that is not needed (the whole model fits on the GPU) too.

    ``gpu``: catalog name or capacity; ``gpus``: GPUs of that type (llama.cpp and accelerate split the
    layers between them); ``ram``: host RAM (GB number or '32GB').
    """
    from planner.sizing.fits import _models

    acc = resolve_gpu(gpu)
    if acc is None:
        raise InvalidRequestError("offload needs a GPU (--gpu NAME_OR_SIZE).")
    gpus = _positive_int("gpus", gpus, MAX_GPUS)
    context = _positive_int("context", context, MAX_TOKENS)
    batch = _positive_int("batch", batch, MAX_BATCH)
    wanted = tuple(modes) if modes is not None else tuple(MODES)
    for mode in wanted:
        if mode not in MODES:
            raise InvalidRequestError(f"unknown offload mode {mode!r}; modes: {', '.join(MODES)}.")
    links = host_links(acc, ram, host_bandwidth_gbps)
    if acc.memory_kind == "unified":
        raise InvalidRequestError(f"{acc.name} has unified memory: its GPU memory is the RAM, so there is "
                                  "nothing to offload to.")
    names = tuple(dict.fromkeys(_models(models)))
    if not names:
        return []
    gpu_bytes = acc.memory_usable_gib * GIB * gpus
    result: list[OffloadMode] = []
    tables = {}
    if {"ngl", "moe-cpu", "cpu-only"} & set(wanted):
        tables["llamacpp"] = _cached_table(names, LLAMACPP_FORMATS, "llamacpp", kv_dtype, context, batch)
    if "device-map" in wanted:
        tables["hf"] = _cached_table(names, DEVICE_MAP_FORMATS, "hf", kv_dtype, context, batch)
    for m, name in enumerate(names):
        per_model: list[OffloadMode] = []
        for mode in wanted:
            engine = "hf" if mode == "device-map" else "llamacpp"
            table = tables[engine]
            formats = DEVICE_MAP_FORMATS if engine == "hf" else LLAMACPP_FORMATS
            options = []
            for f, precision in enumerate(formats):
                r = m * len(formats) + f
                if format_support(get_format(precision), acc, engine).supported is False:
                    continue
                option = _split(mode, table, r, acc, gpus, gpu_bytes, links, batch, context)
                if option is not None and option.fits:
                    options.append(option)
            if options:
                per_model.append(_choose(options, links))
        per_model.sort(key=lambda o: -(o.decode_tok_s or 0.0))
        result.extend(per_model)
    return result


def _choose(options: list[OffloadMode], links: HostLinks) -> OffloadMode:
    """The option the recommend rule picks (headroom = free RAM, then quality, then speed)."""
    n = len(options)
    room = np.array([100 * (links.usable_ram_gib - o.host_gib) / links.usable_ram_gib if links.usable_ram_gib else 0.0
                     for o in options])
    loss = loss_of([o.precision for o in options])
    # An upper bound (GPU part unknown) would favour the formats that keep the most on the GPU for no
    # known reason: rank those by headroom and quality only.
    speed = np.array([o.decode_tok_s if o.decode_tok_s is not None and not o.speed_upper_bound else np.nan
                      for o in options], dtype=float)
    mask = recommended(np.zeros(n, dtype=int), np.ones(n, dtype=bool), room, loss, speed)
    return options[int(np.flatnonzero(mask)[0])]


def _split(mode: str, table: FitTable, r: int, acc: Accelerator, gpus: int, gpu_bytes: float, links: HostLinks,
           batch: int, context: int) -> OffloadMode | None:
    """Memory split and speed of one (model, format) row in one mode; None when the mode does not apply."""
    prepared = table.prepared[r]
    if prepared is None:
        return None
    spec, plan, fmt = prepared.setup.spec, prepared.plan, prepared.setup.fmt
    layers = spec.total_layers
    weights = plan.weights.total
    layer_w = sum(g.bytes for g in plan.weights.groups if g.group.name.startswith("layers."))
    expert_w = sum(g.bytes for g in plan.weights.groups if g.group.component == "experts")
    other_w = weights - layer_w
    kv = float(table.kv_bytes(batch, context)[r])
    safe = float(table.safe_bytes(batch, context)[r])
    rest = max(safe - weights - kv, 0.0)  # context, activations, buffers (at their upper bound)
    reads = table.reads[r]
    read = reads.at(batch)
    layer_read = read * layer_w / weights if weights else 0.0  # bytes a step reads from the repeating layers
    host_rate = links.host_bandwidth_gbps * 1e9 * links.host_efficiency
    pcie_rate = links.pcie_gbps * 1e9 * links.pcie_efficiency
    if mode == "ngl" or mode == "device-map":
        kv_in_layer = kv if mode == "ngl" else 0.0  # llama.cpp keeps a layer's KV where the layer runs
        fixed = rest + other_w + (0.0 if mode == "ngl" else kv)
        per_layer = (layer_w + kv_in_layer) / layers
        n = int(min(layers, max(math.floor((gpu_bytes - fixed) / per_layer), -1))) if per_layer > 0 else layers
        if n >= layers or n < (1 if mode == "ngl" else 0):
            return None  # fits whole, or not even the fixed part fits
        off = (layers - n) / layers
        gpu_total, host = fixed + n * per_layer, (layer_w + kv_in_layer) * off
        if mode == "ngl":
            gpu_s = _gpu_seconds(prepared, acc, read - layer_read * off, kv * (1 - off), 1 - off, n, batch, context)
            host_s, pcie_s = (layer_read + kv) * off / host_rate, 0.0
            how = f"-ngl {n} (of {layers} layers)"
        else:
            gpu_s = _gpu_seconds(prepared, acc, read, kv, 1.0, layers, batch, context)
            host_s, pcie_s = 0.0, layer_w * off / pcie_rate
            how = f"{n} of {layers} layers on GPU"
    elif mode == "moe-cpu":
        if spec.moe is None or not expert_w:
            return None
        gpu_total, host = safe - expert_w, expert_w
        if gpu_total > gpu_bytes:
            return None
        expert_read = read - reads.dense
        gpu_s = _gpu_seconds(prepared, acc, reads.dense, kv, 1.0, layers, batch, context, experts=False)
        host_s, pcie_s, n = expert_read / host_rate, 0.0, layers
        how = "-ngl 999 -ot exps=CPU"
    else:  # cpu-only
        gpu_total, host, n = 0.0, safe, 0
        gpu_s, host_s, pcie_s = 0.0, (read + kv) / host_rate, 0.0
        how = "-ngl 0"
    fits = gpu_total <= gpu_bytes and host <= links.usable_ram_gib * GIB
    known = gpu_s is not None and math.isfinite(gpu_s)
    seconds = (gpu_s if known else 0.0) + host_s + pcie_s
    parts = {"gpu": gpu_s if known else 0.0, "host RAM": host_s, f"PCIe {links.pcie_gen}": pcie_s}
    loss = float(loss_of([fmt.name])[0])
    return OffloadMode(
        model=spec.name, mode=mode, description=MODES[mode], engine=prepared.setup.engine.name, precision=fmt.name,
        how=how, gpu_layers=n, layers=layers, gpu_gib=gpu_total / gpus / GIB, host_gib=host / GIB, fits=fits,
        decode_tok_s=batch / seconds if seconds > 0 else None, speed_upper_bound=not known,
        gpu_seconds=gpu_s if known else None, host_seconds=host_s, pcie_seconds=pcie_s,
        bound_by=max(parts, key=parts.get), quality_loss_pct=None if math.isnan(loss) else loss)


def _gpu_seconds(prepared, acc: Accelerator, weight_bytes: float, kv_bytes: float, share: float, layers: int,
                 batch: int, context: int, experts: bool = True) -> float | None:
    """Step time of the part on the GPU (``share`` of the FLOPs, ``layers`` layers): the formula of
    ``planner.speed.step`` (None when the GPU's bandwidth is unknown). Layers split over several GPUs
    run one after the other, so the time is that of one GPU holding them all."""
    from planner.speed.engines import get_speed_engine
    from planner.speed.model import moe_experts_run
    from planner.speed.roofline import decode_step_flops
    from planner.speed.step import matmul_peak, step_terms

    if acc.memory_bandwidth_gbps is None or layers == 0:
        return None if acc.memory_bandwidth_gbps is None else 0.0
    setup = prepared.setup
    engine = get_speed_engine(setup.engine.name)
    flops = decode_step_flops(setup.spec, context, batch)
    peak = matmul_peak(engine, acc, setup.fmt.matmul_dtype)
    *_, seconds = step_terms(engine, weight_bytes=weight_bytes, kv_bytes=kv_bytes, linear_flops=flops.linear * share,
                             attention_flops=flops.attention * share, bandwidth_gbps=acc.memory_bandwidth_gbps,
                             peak_tflops=peak or np.nan, vector_tflops=acc.fp32_tflops or np.nan, mfu=engine.decode_mfu,
                             kernel_factor=engine.kernel_factor(setup.fmt)[0],
                             compute_factor=engine.compute_factor(setup.fmt)[0], layers=layers,
                             experts_run=moe_experts_run(setup.spec, batch) if experts else 0.0)
    return float(seconds)
