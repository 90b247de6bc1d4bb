"""Logits: the lm_head output a generation step keeps.

- ``last`` (transformers >= ~4.45 ``logits_to_keep=1``, vLLM, llama.cpp): one ``vocab`` row per
  sequence in the activation dtype, plus its fp32 copy when the engine casts it
  (``next_token_logits = outputs.logits[:, -1, :].clone().float()``).
- ``full`` (transformers <= 4.44 computes lm_head for every prompt position and casts the whole
  tensor with ``logits.float()``; LitGPT returns every position): ``T x vocab`` per sequence in the
  activation dtype, plus the fp32 copy alive during the cast.
Decode steps add the sampler's fp32 scores (one more ``vocab x 4`` per sequence).
"""

from __future__ import annotations

from planner.memory.phases import Coeffs

SOURCE = ("transformers GenerationMixin._sample (logits_to_keep / next_token_logits .float()); "
          "transformers 4.38 LlamaForCausalLM.forward 'logits = logits.float()' over all positions; "
          "LitGPT GPT.forward returns logits for every input position")


def prefill_logits(vocab: int, act_bytes: float, *, mode: str, fp32_copy: bool) -> Coeffs:
    """Logits alive when the prefill's lm_head runs (per sequence)."""
    per_row = vocab * (act_bytes + (4 if fp32_copy else 0))
    return Coeffs(per_token=per_row) if mode == "full" else Coeffs(per_seq=per_row)


def decode_logits(vocab: int, act_bytes: float, *, fp32_copy: bool) -> Coeffs:
    """Logits and sampler scores of one decode step (per sequence)."""
    return Coeffs(per_seq=vocab * (act_bytes + (4 if fp32_copy else 0) + 4))
