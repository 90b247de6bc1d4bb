"""What a step may need besides the model and its spec; the caller (``executors.execute``) fills it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# batches(batch_size, seq_len) -> iterable of LongTensor input ids of shape (batch_size, seq_len).
BatchSource = Callable[[int, int], Iterable[Any]]


@dataclass
class StepContext:
    """Inputs shared by the steps of one run.

    ``batches`` yields training/calibration token ids from the training split. It must be deterministic
    (the same sequence on every call): distillation resumes by skipping the batches a checkpoint has
    consumed. It may be endless; steps take what they need. Steps that need data (distillation, Wanda,
    whole-layer pruning, fine-tuning) raise a clear error when it is None.

    ``evaluator(model) -> float`` scores a model, higher is better (e.g. minus perplexity, fidelity);
    the gradual pruning schedule needs it, distillation reports it before and after training.
    """

    batches: BatchSource | None = None
    evaluator: Callable[[Any], float] | None = None
    tokenizer: Any = None
    device: str = "cpu"
    work_dir: Path | None = None
    seed: int = 0
    progress: bool = False
    calibration_batches: int = 8
    calibration_batch_size: int = 4
    calibration_seq_len: int = 128
    checkpoint_every: int = 50
    kept_layers: list[int] | None = None
    """original block index of each block of the current model, set by a step that removes blocks (whole-layer
    pruning, a derived student): later steps address blocks by their original index (``block_formats``)"""

    def require_batches(self, purpose: str) -> BatchSource:
        if self.batches is None:
            from planner.errors import InvalidRequestError

            raise InvalidRequestError(f"{purpose} needs training/calibration data: StepContext.batches is None "
                                      f"(pass a callable batches(batch_size, seq_len) -> token id tensors).")
        return self.batches

    def calibration(self, purpose: str) -> list[Any]:
        """``calibration_batches`` batches of calibration token ids."""
        source = self.require_batches(purpose)
        out = []
        for batch in source(self.calibration_batch_size, self.calibration_seq_len):
            out.append(batch)
            if len(out) >= self.calibration_batches:
                break
        return out
