"""Logits and cross-entropy memory at the loss, where all activations are still alive.

The output layer produces ``tokens x vocab`` logits, often the largest tensor of a step (a 128k-256k
vocabulary at 4k tokens is 2-4 GiB per copy; unsloth #824). How many copies exist at once depends on
how the loss is computed:

- ``full-fp32`` (transformers ``ForCausalLMLoss``: ``logits.float()`` then ``cross_entropy``): the
  fp32 log-probabilities are saved for backward; in the loss backward their gradient and the logits'
  gradient exist together with them: ``3 x 4`` bytes per token x vocab at the peak.
- ``full-compute`` (remote-code models that never upcast, e.g. Qwen-1): the same three tensors in the
  compute dtype: ``3 x c``.
- ``chunked-compute`` (lit-gpt ``lm_head_chunk_size=128`` + ``chunked_cross_entropy``): the logits
  chunks and their log-probabilities stay alive in the compute dtype (``2 x c``); gradients exist for
  one 128-token chunk at a time.
- ``chunked-fp32`` (torchtune ``CEWithChunkedOutputLoss``, 8 chunks): compute-dtype logits chunks plus
  fp32 log-probabilities for all tokens (``c + 4``); fp32 gradients for one chunk at a time.
- ``fused`` (Liger ``LigerFusedLinearCrossEntropyLoss``): logits are never materialised; one chunk of
  ``next_pow2(ceil(tokens / ceil(vocab / hidden)))`` tokens exists at a time, with its gradient.

Gemma-2's final-logit soft-capping (``tanh``) saves one more full logits tensor in eager code.
Encoder models here train a sequence-classification head: no vocabulary logits.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.errors import InvalidRequestError

LOSS_IMPLS: tuple[str, ...] = ("full-fp32", "full-compute", "chunked-compute", "chunked-fp32", "fused")
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


def loss_memory(*, vocab: int, hidden: int, impl: str, compute_bytes: int, softcap: bool = False) -> LossMemory:
    """Peak logits / loss bytes per sequence (logits exist for every position of the micro-batch)."""
    if impl not in LOSS_IMPLS:
        raise InvalidRequestError(f"unknown loss implementation {impl!r}; use one of {', '.join(LOSS_IMPLS)}.")
    c = compute_bytes
    inputs = {"vocab": vocab, "compute_bytes": c, "loss": impl}
    if impl in ("full-fp32", "full-compute"):
        element = 4 if impl == "full-fp32" else c
        copies = 4 if softcap else 3
        per_elem = copies * element
        formula = (f"tokens x vocab x {copies} x {element} bytes (log-probs, their gradient, the logits' gradient"
                   + (", the soft-capping tanh output)" if softcap else ")"))
        return LossMemory(vocab * per_elem, 0.0, formula, inputs)
    if impl == "chunked-compute":
        return LossMemory(vocab * 2 * c, LITGPT_CHUNK_TOKENS * vocab * 2 * c,
                          "tokens x vocab x 2c (logits + log-probs) + 128-token chunk x vocab x 2c (gradients)",
                          {**inputs, "chunk_tokens": LITGPT_CHUNK_TOKENS})
    if impl == "chunked-fp32":
        return LossMemory(vocab * (c + 4) + vocab * 2 * 4 / TORCHTUNE_CHUNKS, 0.0,
                          "tokens x vocab x (c + 4) + tokens/8 x vocab x 2 x 4 (one fp32 chunk and its gradient)",
                          {**inputs, "chunks": TORCHTUNE_CHUNKS})
    # Liger: chunk = next_pow2(ceil(BT / ceil(V/H))) tokens, i.e. about BT x H / V: per token ~ H x 2 x 4 bytes
    return LossMemory(hidden * 2 * 4 * 2, 0.0,
                      "~ tokens x hidden x 2 x 4 x 2 (a logits chunk of tokens x hidden / vocab rows and its "
                      "gradient, next power of two)", {**inputs, "hidden": hidden})
