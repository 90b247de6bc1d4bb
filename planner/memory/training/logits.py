"""Logits and cross-entropy memory at the loss, where all activations are still alive.

The output layer produces ``tokens x vocab`` logits, often the largest tensor of a step (a 128k-256k
vocabulary at 4k tokens is 2-4 GiB per copy; unsloth #824). ``e`` is the loss element size: 4 when the
logits are cast to fp32 for the loss (transformers ``ForCausalLMLoss`` does ``logits.float()``;
autocast runs ``log_softmax``/``cross_entropy`` in fp32 anyway), else the compute dtype ``c``.

- ``full`` (one cross-entropy over all positions): the log-probabilities are saved for backward; in
  the loss backward their gradient and the logits' gradient exist together with them: ``3 x e``
  bytes per token x vocab at the peak.
- ``chunked-128`` (lit-gpt ``lm_head_chunk_size=128`` + ``chunked_cross_entropy``): the logits chunks
  (``c``) and their log-probabilities (``e``) stay alive for all tokens; gradients exist for one
  128-token chunk at a time (``2 x e x 128 x vocab`` per sequence).
- ``chunked-8`` (torchtune ``CEWithChunkedOutputLoss``, 8 chunks of the sequence): the output layer
  returns 8 logits chunks in the compute dtype (``c``, all tokens, kept until the output layer's
  backward); each chunk is upcast to fp32 and passed to ``cross_entropy`` one at a time. Eager, every
  chunk's ``log_softmax`` output (fp32, ``e = 4``) is saved for backward, so fp32 log-probabilities of
  all tokens are alive at the loss; fp32 gradients exist for one chunk. With the loss compiled
  (torchtune ``compile=True`` calls ``training.compile_loss``) inductor fuses upcast, log-softmax and
  NLL per chunk and saves only the ``c``-byte chunk and one fp32 log-sum-exp per row: the fp32 upcast,
  its log-probabilities and gradient exist for one chunk at a time (``tokens/8 x vocab x (4 + 4 + c)``).
- ``fused`` (Liger ``LigerFusedLinearCrossEntropyLoss``): logits are never materialised; a chunk of
  ``next_pow2(tokens / ceil(vocab / hidden))`` rows (about ``tokens x hidden / vocab``) exists at a
  time with its gradient, ``~ tokens x hidden x 2 x 4 x 2`` bytes.

Gemma-2's final-logit soft-capping (``tanh``) saves one more full logits tensor (``full`` only).
Encoder models here train a sequence-classification head: no vocabulary logits.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.errors import InvalidRequestError

LOSS_IMPLS: tuple[str, ...] = ("full", "chunked-128", "chunked-8", "fused")
COMPILED_CHUNK_COPIES = ("fp32 upcast", "fp32 log-probs / gradient", "compute-dtype gradient")
LITGPT_CHUNK_TOKENS = 128
TORCHTUNE_CHUNKS = 8


@dataclass(frozen=True)
class LossMemory:
    """Bytes alive at the loss (on top of the stored activations) as coefficients of one sequence:
    ``per_token x s + per_seq`` per sequence of ``s`` tokens."""

    per_token: float
    per_seq: float
    formula: str
    inputs: dict

    def at(self, batch: int, seq_len: int) -> float:
        return batch * (self.per_token * seq_len + self.per_seq)


def loss_memory(*, vocab: int, hidden: int, impl: str, compute_bytes: int, fp32_loss: bool,
                softcap: bool = False, compiled: bool = False) -> LossMemory:
    """Peak logits / loss bytes per sequence (logits exist for every position of the micro-batch)."""
    if impl not in LOSS_IMPLS:
        raise InvalidRequestError(f"unknown loss implementation {impl!r}; use one of {', '.join(LOSS_IMPLS)}.")
    c, e = compute_bytes, 4 if fp32_loss else compute_bytes
    inputs = {"vocab": vocab, "compute_bytes": c, "loss_bytes": e, "loss": impl}
    if impl == "full":
        copies = 4 if softcap else 3
        formula = (f"tokens x vocab x {copies} x {e} bytes (log-probs, their gradient, the logits' gradient"
                   + (", the soft-capping tanh output)" if softcap else ")"))
        return LossMemory(vocab * copies * e, 0.0, formula, inputs)
    if impl == "chunked-128":
        return LossMemory(vocab * (c + e), LITGPT_CHUNK_TOKENS * vocab * 2 * e,
                          "tokens x vocab x (c + e) (logits chunks + log-probs) + 128 tokens x vocab x 2e (gradients)",
                          {**inputs, "chunk_tokens": LITGPT_CHUNK_TOKENS})
    if impl == "chunked-8" and compiled:
        return LossMemory(vocab * c + 4 + vocab * (4 + 4 + c) / TORCHTUNE_CHUNKS, 0.0,
                          "tokens x (vocab x c + 4) (logits chunks + log-sum-exp) + tokens/8 x vocab x (4 + 4 + c) "
                          "(one chunk's fp32 upcast, log-probs and gradient; compiled loss)",
                          {**inputs, "chunks": TORCHTUNE_CHUNKS, "compiled": True})
    if impl == "chunked-8":
        return LossMemory(vocab * (c + 4) + vocab * 2 * 4 / TORCHTUNE_CHUNKS, 0.0,
                          "tokens x vocab x (c + 4) + tokens/8 x vocab x 2 x 4 (one fp32 chunk and its gradient)",
                          {**inputs, "chunks": TORCHTUNE_CHUNKS})
    return LossMemory(hidden * 2 * 4 * 2, 0.0,
                      "~ tokens x hidden x 2 x 4 x 2 (a logits chunk of ~tokens x hidden / vocab rows and its "
                      "gradient, next power of two)", {**inputs, "hidden": hidden})
