"""Distillation: build a smaller student from the teacher and train it to imitate the teacher.

The student is either derived from the teacher (``depth_ratio``: evenly spaced layers, first and last
kept; ``width_ratio``: the highest-norm MLP channels; both rules in :mod:`planner.models.derive`),
initialised with the teacher's weights, or a named model loaded from a local directory. It is trained
for ``spec.steps`` AdamW steps on ``context.batches`` with the loss of :mod:`executors.steps.training`
(causal LMs: soft KL + hard next-token CE; encoders: hidden-state matching).

Checkpoints: with ``context.work_dir`` set, the student, optimizer and RNG state are saved every
``context.checkpoint_every`` steps (and at the end) to ``distill-checkpoint.pt``; a run that finds a
checkpoint of the same run (same spec, teacher, seed) continues from it and, because the batch source
is deterministic and skipped to the same position, ends in the same state as an uninterrupted run. A
checkpoint of a different run is never overwritten: that is an error.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from executors._imports import import_transformers
from planner.errors import InvalidRequestError, UnsupportedError
from planner.models.derive import (
    check_structured_support,
    ffn_alignment,
    kept_ffn_width,
    student_layer_indices,
)
from planner.strategy import CompressionStrategy, DistillationSpec
from executors.steps import register_step
from executors.steps._recorder import Recorder
from executors.steps.context import StepContext
from executors.steps.layout import ModelLayout
from executors.steps.report import StepReport
from executors.steps.storage import count_params
from executors.steps.structured import keep_blocks, keep_ffn_channels
from executors.steps.training import (
    adamw,
    causal_distillation_loss,
    embedding_loss,
    endless,
    last_hidden,
    train_steps,
)

CHECKPOINT_NAME = "distill-checkpoint.pt"


@register_step(DistillationSpec)
def distill(teacher: nn.Module, spec: DistillationSpec, context: StepContext,
            strategy: CompressionStrategy) -> tuple[nn.Module, StepReport]:
    batches = context.require_batches("distillation")
    rec = Recorder("distillation", spec, teacher)
    student, structure = build_student(teacher, spec, strategy)
    rec.structure.update(structure)
    if "teacher_layers_kept" in structure:
        earlier, kept = context.kept_layers, structure["teacher_layers_kept"]
        context.kept_layers = [earlier[i] for i in kept] if earlier else list(kept)
    causal = ModelLayout(teacher).architecture == "decoder"
    if context.evaluator is not None:
        rec.metrics["student_quality_initial"] = float(context.evaluator(student))

    torch.manual_seed(context.seed)
    optimizer = adamw(student.parameters(), spec.learning_rate)
    checkpoint = _Checkpoint(context.work_dir, _fingerprint(spec, teacher, student, context.seed))
    start = checkpoint.restore(student, optimizer, rec)
    if start:
        rec.notes.append(f"resumed from {checkpoint.path} at step {start}")
    loss_fn = _loss_fn(student, teacher, spec, causal)
    every = max(1, context.checkpoint_every)
    train_steps(student, loss_fn, endless(batches, spec.batch_size, spec.seq_len, skip=start), optimizer,
                start=start, stop=spec.steps, device=context.device, log_every=max(1, spec.steps // 20),
                history=rec.history, progress=context.progress, description="distilling",
                after_step=lambda step: checkpoint.save(student, optimizer, step, rec.history)
                if step % every == 0 or step == spec.steps else None)

    if rec.history:
        quarter = max(1, len(rec.history) // 4)
        rec.metrics["train_loss_start"] = sum(h["loss"] for h in rec.history[:quarter]) / quarter
        rec.metrics["train_loss_end"] = sum(h["loss"] for h in rec.history[-quarter:]) / quarter
    if context.evaluator is not None:
        rec.metrics["student_quality_final"] = float(context.evaluator(student))
    what = "named student" if spec.student else f"student {spec.summary()}"
    return student, rec.finish(student, f"{what}: {rec.params_before:,} -> {count_params(student):,} params, "
                                        f"{spec.steps} steps ({'logits KL + CE' if causal else spec.hidden_loss})")


def build_student(teacher: nn.Module, spec: DistillationSpec,
                  strategy: CompressionStrategy) -> tuple[nn.Module, dict[str, Any]]:
    """The student (a copy of the teacher cut to size, or the named model) and what it kept."""
    if spec.student is not None:
        return _load_named_student(teacher, spec.student), {"student": spec.student}
    layout = ModelLayout(teacher)
    check_structured_support(layout.require_spec("a derived student"), "student")
    student = copy.deepcopy(teacher)
    structure: dict[str, Any] = {}
    if spec.depth_ratio is not None:
        indices = student_layer_indices(layout.spec.num_layers, spec.depth_ratio)
        keep_blocks(student, ModelLayout(student), indices)
        structure["teacher_layers_kept"] = indices
    if spec.width_ratio is not None:
        width = kept_ffn_width(layout.spec.mlp.intermediate_size, spec.width_ratio, ffn_alignment(strategy))
        keep_ffn_channels(student, ModelLayout(student), width)
        structure["intermediate_size"] = width
    if count_params(student) == count_params(teacher):
        raise InvalidRequestError(f"student {spec.summary()} keeps every layer and MLP channel of the teacher "
                                  f"({layout.spec.num_layers} layers, MLP {layout.spec.mlp.intermediate_size}): "
                                  f"it would be a copy. Use a smaller depth_ratio or width_ratio.")
    return student, structure


def _load_named_student(teacher: nn.Module, student: str) -> nn.Module:
    path = Path(student).expanduser()
    if not (path / "config.json").is_file():
        raise UnsupportedError(f"named student {student!r}: distillation needs the student's weights in a local "
                               f"directory with config.json (registry entries hold configs only).")
    transformers = import_transformers("loading a named student")
    decoder = ModelLayout(teacher).architecture == "decoder"
    auto = transformers.AutoModelForCausalLM if decoder else transformers.AutoModel
    model = auto.from_pretrained(path)
    teacher_vocab, student_vocab = teacher.config.vocab_size, model.config.vocab_size
    if decoder and teacher_vocab != student_vocab:
        raise InvalidRequestError(f"named student {student!r} has a vocabulary of {student_vocab} tokens, the "
                                  f"teacher {teacher_vocab}: logit distillation needs the same tokenizer.")
    if not decoder and teacher.config.hidden_size != model.config.hidden_size:
        raise InvalidRequestError(f"named student {student!r} has hidden size {model.config.hidden_size}, the "
                                  f"teacher {teacher.config.hidden_size}: hidden-state matching needs equal widths.")
    return model.to(next(teacher.parameters()).device)


def _loss_fn(student: nn.Module, teacher: nn.Module, spec: DistillationSpec, causal: bool):
    teacher.eval()

    def causal_loss(ids: torch.Tensor):
        with torch.no_grad():
            teacher_logits = teacher(input_ids=ids).logits
        return causal_distillation_loss(student(input_ids=ids).logits, teacher_logits, ids, spec.temperature,
                                        spec.alpha)

    def encoder_loss(ids: torch.Tensor):
        with torch.no_grad():
            teacher_hidden = last_hidden(teacher, ids)
        return embedding_loss(last_hidden(student, ids), teacher_hidden, spec.hidden_loss)
    return causal_loss if causal else encoder_loss


def _fingerprint(spec: DistillationSpec, teacher: nn.Module, student: nn.Module, seed: int) -> str:
    facts = {"spec": spec.model_dump(mode="json"), "teacher_params": count_params(teacher),
             "student_params": count_params(student), "seed": seed,
             "teacher_checksum": float(sum(float(p.detach().float().abs().sum()) for p in teacher.parameters()))}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


class _Checkpoint:
    """Atomic save/restore of a distillation run in ``work_dir`` (no-op without a work dir)."""

    def __init__(self, work_dir: Path | None, fingerprint: str):
        self.path = Path(work_dir) / CHECKPOINT_NAME if work_dir is not None else None
        self.fingerprint = fingerprint

    def restore(self, student: nn.Module, optimizer: torch.optim.Optimizer, rec: Recorder) -> int:
        if self.path is None or not self.path.exists():
            return 0
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        if state.get("fingerprint") != self.fingerprint:
            raise InvalidRequestError(f"{self.path} is the checkpoint of a different distillation run (other spec, "
                                      f"teacher or seed); move it away or use another work directory.")
        student.load_state_dict(state["student"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        rec.history += state["history"]
        return int(state["step"])

    def save(self, student: nn.Module, optimizer: torch.optim.Optimizer, step: int, history: list[dict]) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        torch.save({"fingerprint": self.fingerprint, "step": step, "student": student.state_dict(),
                    "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(), "history": history},
                   temporary)
        os.replace(temporary, self.path)
