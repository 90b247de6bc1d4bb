"""Losses and the training loop shared by distillation and post-pruning fine-tuning.

- Causal LMs (seeds/003): ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE``, the KL over
  every position's vocabulary distribution (averaged over tokens), the cross-entropy of the next token.
- Encoders: matching of the last hidden states, ``cosine`` = ``1 - cos`` of the mean-pooled embeddings
  (what sentence-transformers' MiniLM serves) or ``mse`` over every token's hidden state.
The batches carry no padding (packed text), so mean pooling is a plain mean over positions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

from executors.steps.context import BatchSource
from executors.steps.linears import is_dense, is_linear_like
from planner.errors import InvalidRequestError

LossFn = Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


def causal_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, input_ids: torch.Tensor,
                             temperature: float, alpha: float) -> tuple[torch.Tensor, dict[str, float]]:
    vocab = student_logits.shape[-1]
    s = student_logits.float().reshape(-1, vocab)
    t = teacher_logits.float().reshape(-1, vocab)
    soft = F.kl_div(F.log_softmax(s / temperature, dim=-1), F.softmax(t / temperature, dim=-1),
                    reduction="batchmean") * temperature ** 2
    hard = next_token_loss(student_logits, input_ids)
    loss = alpha * soft + (1 - alpha) * hard
    return loss, {"loss": loss.item(), "soft": soft.item(), "hard": hard.item()}


def next_token_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    vocab = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, vocab), input_ids[:, 1:].reshape(-1))


def embedding_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                   kind: str) -> tuple[torch.Tensor, dict[str, float]]:
    s, t = student_hidden.float(), teacher_hidden.float()
    if kind == "mse":
        loss = F.mse_loss(s, t)
    else:
        loss = 1 - F.cosine_similarity(s.mean(1), t.mean(1), dim=-1).mean()
    return loss, {"loss": loss.item()}


def last_hidden(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    output = model(input_ids=input_ids, output_hidden_states=True)
    hidden = getattr(output, "last_hidden_state", None)
    return hidden if hidden is not None else output.hidden_states[-1]


def endless(source: BatchSource, batch_size: int, seq_len: int, skip: int = 0) -> Iterator[torch.Tensor]:
    """The batches of ``source`` over and over (a finite source restarts), after skipping ``skip``."""
    position = 0
    while True:
        produced = False
        for batch in source(batch_size, seq_len):
            produced = True
            if position >= skip:
                yield batch
            position += 1
        if not produced:
            raise InvalidRequestError("the batch source (StepContext.batches) produced no batches.")


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int, start: int, description: str):
    """A rich progress bar (or nothing); yields ``advance()``."""
    if not enabled:
        yield lambda: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), transient=True) as bar:
        task = bar.add_task(description, total=total, completed=start)
        yield lambda: bar.advance(task)


def adamw(parameters, lr: float) -> torch.optim.AdamW:
    """AdamW with PyTorch's fused kernel (CPU and CUDA): ~9x faster than the default loop on this CPU."""
    return torch.optim.AdamW(list(parameters), lr=lr, fused=True)


def train_steps(model: nn.Module, loss_fn: LossFn, batches: Iterator[torch.Tensor], optimizer: torch.optim.Optimizer,
                *, start: int, stop: int, device: str, log_every: int, history: list[dict],
                progress: bool = False, description: str = "training",
                after_step: Callable[[int], None] | None = None) -> None:
    """Run optimizer steps ``start .. stop - 1``, appending logged loss records to ``history``."""
    model.train()
    with progress_bar(progress, stop, start, description) as advance:
        for step in range(start, stop):
            loss, parts = loss_fn(next(batches).to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if (step + 1) % log_every == 0 or step == start or step + 1 == stop:
                history.append({"step": step + 1, **parts})
            if after_step is not None:
                after_step(step + 1)
            advance()
    model.eval()


def keep_zeros(model: nn.Module) -> Callable[[int], None]:
    """An ``after_step`` hook re-zeroing the weights that are zero now (pruned weights stay pruned): every
    dense linear-like module (Linear, Conv1D) and the fused 3-D MoE expert tensors."""
    weights = [m.weight for m in model.modules() if is_linear_like(m) and is_dense(m)]
    weights += [p for n, p in model.named_parameters() if p.dim() == 3 and p.is_floating_point() and "expert" in n.lower()]
    masks = [(w, w.detach() == 0) for w in weights if bool((w == 0).any())]

    def apply(_step: int) -> None:
        with torch.no_grad():
            for param, mask in masks:
                param.masked_fill_(mask, 0)
    return apply
