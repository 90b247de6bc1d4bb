"""Can an accelerator run a sharded fine-tuning step (DDP, DeepSpeed ZeRO, FSDP)?

The memory of ZeRO-3 across 4 Apple chips is easy to compute, but nothing runs it: ``size --mode``
answers would list chips that cannot run the requested setup as the best answer. The rule is data
(``planner/data/distributed_support.toml``: per vendor, the shardings its collective backend and
frameworks run, with a source); ``sharding_support`` reads it.
"""

from __future__ import annotations

from functools import cache

from hardware_db import Accelerator
from planner._data import read_data_toml
from planner.memory.devices import Support


@cache
def _vendors() -> dict[str, dict]:
    return read_data_toml("distributed_support.toml", 1)["vendors"]


def sharding_support(acc: Accelerator, sharding: str, gpus: int) -> Support:
    """Whether ``gpus`` x ``acc`` run a fine-tuning step with ``sharding`` (none, ddp, zero1-3, fsdp).

    One device without sharding always runs; an unknown vendor (a capacity-only device) is unknown."""
    if sharding == "none" and gpus <= 1:
        return Support(True, "one device, no sharding")
    entry = _vendors().get(acc.vendor)
    if entry is None:
        return Support(None, f"sharding support unknown for vendor {acc.vendor!r}")
    if sharding in entry["shardings"]:
        return Support(True, f"{acc.vendor}: {entry['source']}")
    reason = entry.get("reason") or (f"{acc.vendor} runs {', '.join(entry['shardings']) or 'no sharding'}, "
                                     f"not {sharding}")
    return Support(False, reason)
