"""Replay the intact model's block outputs so that an evaluation starts at the first changed block.

The profile changes one block at a time (one module group's weights, or the whole block dropped) and
scores the model with the evaluator on the same small calibration set each time. Blocks before the
changed one see exactly the inputs they saw on the intact model, so their outputs are the recorded
ones: recomputing them is wasted work (on average about half of every evaluation's block compute).

:class:`BlockReplay` records, during one evaluator pass over the intact model, the output of the
blocks chosen as *start points* for every forward call, in call order. Inside
``with replay.starting_at(c):`` the blocks ``0 .. c-1`` no longer compute: each returns a copy of
block ``c-1``'s recorded output for the current call (what the intact blocks would have produced),
so block ``c`` onward computes on bit-identical inputs and the score equals a full evaluation's.

Guards, so that a replayed score can never silently differ from the full one:

- block 0 checks, on every replayed call, that its input equals the one recorded for that call (the
  evaluator fed the same batches in the same order); otherwise :class:`ReplayMismatch` is raised and
  the caller evaluates in full;
- the number of calls must match the recording (checked when the ``with`` block exits);
- recordings are kept only within a memory budget (``max_bytes``, block 0's inputs included): when
  every block's outputs do not fit, every other start point is given up until they do, and a change
  in block ``b`` starts at the nearest recorded start point at or before ``b`` (still exact, just
  less saving); with none left, every evaluation runs the whole model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any


class ReplayMismatch(RuntimeError):
    """The evaluator's forward calls differ from the recorded ones (count, order or inputs)."""


def _tensors(value: Any) -> Iterator[Any]:
    import torch

    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


def _copy(value: Any) -> Any:
    """Detached copies of the tensors in ``value`` (a tensor or a tuple of them); other items as they are."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple):
        return tuple(_copy(v) for v in value)
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def _bytes(value: Any) -> int:
    return sum(t.numel() * t.element_size() for t in _tensors(value))


def _first_tensor(args: tuple, kwargs: dict) -> Any:
    if args:
        return args[0]
    return kwargs.get("hidden_states")


class BlockReplay:
    """Records the intact model's block outputs once; replays them for later evaluations.

    ``blocks``: the model's transformer blocks in forward order (``ModelLayout(model).blocks``).
    """

    def __init__(self, blocks: Sequence[Any], *, max_bytes: int):
        self.blocks = list(blocks)
        self.max_bytes = int(max_bytes)
        self.inputs: list[Any] = []  # block 0's input per call
        self.outputs: dict[int, list[Any]] = {}  # start point c -> block c-1's output per call
        self.calls = 0
        self.recorded_bytes = 0

    # -- recording -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def recording(self) -> Iterator["BlockReplay"]:
        """Record block 0's inputs and the start points' block outputs during the evaluator passes run
        inside. Whenever the recording outgrows ``max_bytes``, every other start point is given up (the
        later ones are kept: they save more), so memory never holds more than the budget and a block's
        output."""
        n = len(self.blocks)
        kept = set(range(1, n))
        outputs: dict[int, list[Any]] = {c: [] for c in kept}
        sizes = dict.fromkeys(kept, 0)
        inputs: list[Any] = []
        state = {"inputs": 0, "over": False}

        def total() -> int:
            return state["inputs"] + sum(sizes[c] for c in kept)

        def thin() -> None:
            while kept and total() > self.max_bytes:
                for c in sorted(kept)[0::2]:
                    kept.discard(c)
                    outputs[c].clear()
            if total() > self.max_bytes:  # block 0's inputs alone are over the budget
                state["over"] = True
                inputs.clear()

        def first(_module: Any, args: tuple, kwargs: dict) -> None:
            if not state["over"]:
                inputs.append(_copy(_first_tensor(args, kwargs)))
                state["inputs"] += _bytes(inputs[-1])
                thin()

        def after(index: int):
            def hook(_module: Any, _args: tuple, output: Any) -> None:
                if index + 1 in kept and not state["over"]:
                    outputs[index + 1].append(_copy(output))
                    sizes[index + 1] += _bytes(output)
                    thin()
            return hook

        handles = [self.blocks[0].register_forward_pre_hook(first, with_kwargs=True)]
        handles += [self.blocks[i].register_forward_hook(after(i)) for i in range(n - 1)]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()
        if state["over"] or not kept:
            self.inputs, self.outputs, self.calls, self.recorded_bytes = [], {}, 0, 0
            return
        self.inputs = inputs
        self.calls = len(inputs)
        self.outputs = {c: outputs[c] for c in sorted(kept)}
        self.recorded_bytes = total()

    # -- replaying -------------------------------------------------------------------------------
    def start_for(self, block: int) -> int:
        """The recorded start point for a change in ``block``: the largest one <= block (0 = compute all)."""
        return max((c for c in self.outputs if c <= block), default=0)

    @property
    def starts(self) -> list[int]:
        return sorted(self.outputs)

    @contextlib.contextmanager
    def starting_at(self, start: int) -> Iterator[None]:
        """Blocks ``0 .. start-1`` return the recorded output of block ``start-1`` instead of computing."""
        if start <= 0:
            yield
            return
        if start not in self.outputs:
            raise ValueError(f"no recording for start point {start}; recorded: {self.starts}")
        recorded = self.outputs[start]
        call = {"index": -1}
        patched = self.blocks[:start]

        def replayed(position: int):
            def forward(*args: Any, **kwargs: Any) -> Any:
                if position == 0:
                    import torch

                    call["index"] += 1
                    i = call["index"]
                    if i >= self.calls:
                        raise ReplayMismatch(f"the evaluator made more forward calls than recorded ({self.calls})")
                    given = _first_tensor(args, kwargs)
                    expected = self.inputs[i]
                    if not (isinstance(given, torch.Tensor) and given.shape == expected.shape
                            and torch.equal(given, expected)):
                        raise ReplayMismatch(f"forward call {i}: block 0's input differs from the recorded one")
                return _copy(recorded[call["index"]])
            return forward

        missing = object()
        saved = [block.__dict__.get("forward", missing) for block in patched]  # e.g. accelerate's wrappers
        for position, block in enumerate(patched):
            block.forward = replayed(position)
        try:
            yield
        finally:
            for block, before in zip(patched, saved):
                if before is missing:
                    del block.forward  # the class's forward is back
                else:
                    block.forward = before
        if call["index"] + 1 != self.calls:
            raise ReplayMismatch(f"the evaluator made {call['index'] + 1} forward calls, {self.calls} were recorded")
