"""Activations of an encoder-decoder model (T5, mT5, FLAN-T5, BART) in one training step.

An encoder-decoder step runs the encoder over the ``s`` source tokens and the decoder over the ``t``
target tokens (transformers ``T5ForConditionalGeneration`` / ``BartForConditionalGeneration``):

- each encoder layer saves what a decoder-style layer saves for its self-attention and MLP, on ``s``
  tokens (:func:`planner.memory.training.activations.layer_saved` on a view of the encoder's groups);
- each decoder layer saves its causal self-attention and MLP on ``t`` tokens, plus its
  cross-attention (``EncDecAttention`` / ``encoder_attn``): the norm and ``q`` projection on ``t`` tokens,
  ``k`` and ``v`` projected from the encoder output (``s`` tokens, per layer), eager attention
  probabilities of ``heads x t x s`` (fp32 softmax output, its dropout mask and output) and the ``o``
  projection's input;
- the encoder output is one tensor shared by every cross-attention ``k``/``v`` Linear: saved once;
- T5 v1.1 / FLAN-T5 / mT5 ``feed_forward_proj="gated-gelu"`` runs ``gelu_new`` (``T5Config`` sets
  ``dense_act_fn = "gelu_new"``), whose Python formula keeps three more ``F``-wide intermediates;
- T5's ``DenseReluDense`` applies dropout between the activation and ``wo`` (``T5DenseActDense`` /
  ``T5DenseGatedActDense``: ``hidden_states = self.dropout(hidden_states)``), one more 1-byte mask per
  ``F``-wide token and, after a ReLU (which keeps its own output), the dropped tensor ``wo`` saves;
- logits and cross-entropy cover the ``t`` decoder positions only.

With gradient checkpointing (T5/BART ``gradient_checkpointing_enable``) each block keeps its inputs
(the hidden states, and for the decoder the shared encoder output) and the larger of an encoder and a
decoder layer is recomputed at a time.

The result is expressed per source token with the target length a fixed ratio of it
(``target_len / seq_len``, 1 when not given), so the coefficients stay those of one sequence.
"""

from __future__ import annotations

from dataclasses import replace

from planner.memory.training.activation_memory import ActivationMemory, lora_ranks, model_level_bytes
from planner.memory.training.activations import ActivationSettings, _T, _Tape, backward_workspace, layer_saved
from planner.memory.training.trainable import TrainablePlan
from planner.models.spec import ModelSpec, ParamGroup

CROSS_MARKERS = ("EncDecAttention", "encoder_attn")
INNER_DROPOUT_TYPES = ("t5", "mt5")


def _is_cross(group: ParamGroup) -> bool:
    return any(marker in group.name for marker in CROSS_MARKERS)


def stack_view(spec: ModelSpec, stack: str) -> tuple[ModelSpec, dict[str, str]]:
    """A decoder-style view of one stack (its self-attention and MLP groups named ``layers.*``), and
    the view's group names -> the model's names (so LoRA and trainable lookups use the real module)."""
    groups, names = [], {}
    for group in spec.param_groups:
        if stack == "encoder":
            if not group.name.startswith("encoder.layers."):
                continue
            renamed = replace_name(group, group.name.removeprefix("encoder."))
        else:
            if not group.name.startswith("layers.") or _is_cross(group):
                continue
            renamed = group
        names[renamed.name] = group.name
        groups.append(renamed)
    update: dict = {"param_groups": groups}
    if spec.model_type in INNER_DROPOUT_TYPES and spec.config.get("feed_forward_proj") == "gated-gelu":
        # T5Config: feed_forward_proj "gated-gelu" sets dense_act_fn = "gelu_new" (the Python tanh formula)
        update["mlp"] = spec.mlp.model_copy(update={"activation": "gelu_new"})
    return spec.model_copy(update=update), names


def replace_name(group: ParamGroup, name: str) -> ParamGroup:
    return group.model_copy(update={"name": name})


def _modes(plan: TrainablePlan, names: dict[str, str], by_name: dict[str, ParamGroup], layer: int):
    return lambda g: plan.linear_mode(by_name[names.get(g.name, g.name)], layer)


def _inner_dropout(spec: ModelSpec, settings: ActivationSettings, wo_needs_input: bool) -> float:
    """T5's dropout between the activation and ``wo``: mask (+ the dropped tensor when ``wo`` saves it)."""
    if spec.model_type not in INNER_DROPOUT_TYPES or settings.hidden_dropout <= 0:
        return 0.0
    width = spec.mlp.intermediate_size
    # gated: wo saves the dropped product instead of the product (already counted); relu: the ReLU keeps
    # its output for backward and wo keeps the dropped copy as well
    kept = settings.matmul_bytes * width if wo_needs_input and not spec.mlp.gated else 0.0
    return settings.dropout_mask_bytes * width + kept


def _cross_attention(spec: ModelSpec, settings: ActivationSettings, plan: TrainablePlan, layer: int,
                     norms_trainable: bool) -> tuple[float, float, float, bool]:
    """(bytes per target token, bytes per target token per source token, bytes per source token, whether
    the shared encoder output is saved) of one decoder layer's cross-attention."""
    cross = {g.role: g for g in spec.linear_groups() if _is_cross(g) and g.role}
    by_name = {g.name: g for g in spec.param_groups}
    modes = _modes(plan, {}, by_name, layer)
    ranks = lora_ranks(plan)
    a, m, h = spec.attention, settings.matmul_bytes, spec.hidden_size
    q_w, kv_w = a.num_heads * a.head_dim, a.num_kv_heads * a.head_dim
    target = _Tape(settings, modes, ranks, norms_trainable)
    normed = target.norm("cross_norm", spec.norm.kind, _T("cross_input", h, settings.residual_bytes))
    target.linear(cross.get("q"), normed, q_w)
    per_pair = 0.0
    if settings.attention == "flash":
        target.save("q_sdpa", m * q_w)
        target.save("attn_out", m * q_w)
        target.save("attn_lse", 4 * a.num_heads)
    else:
        target.save("q_bmm", m * q_w)
        per_pair += (4 if m != 4 else m) * a.num_heads
        if settings.attention_dropout > 0:
            per_pair += (settings.dropout_mask_bytes + m) * a.num_heads
        elif m != 4:
            per_pair += m * a.num_heads
    out = target.linear(cross.get("o"), _T("cross_attn_out", q_w, m), h)
    target.dropout("cross_resid_dropout", out, settings.hidden_dropout)
    source = _Tape(settings, modes, ranks, norms_trainable)
    encoder_out = _T("encoder_output", h, settings.residual_bytes)
    source.linear(cross.get("k"), encoder_out, kv_w)
    source.linear(cross.get("v"), encoder_out, kv_w)
    source.save("k_attn", m * q_w)
    source.save("v_attn", m * q_w)
    shared = "encoder_output" in source.saved
    source.saved.pop("encoder_output", None)
    return sum(target.saved.values()), per_pair, sum(source.saved.values()), shared


def _encoder_model_level(spec: ModelSpec, settings: ActivationSettings) -> float:
    """Per source token outside the encoder layers: embedding dropout mask, BART's layernorm_embedding,
    T5's final norm."""
    h, r = spec.hidden_size, settings.residual_bytes
    total = settings.dropout_mask_bytes * h if settings.hidden_dropout > 0 else 0.0
    if spec.embeddings.norm:
        total += r * h + 8
    if spec.norm.final:
        total += (4 if settings.norm_fp32_input else r) * h + 4
    return total


def _split(view: ModelSpec, settings: ActivationSettings, modes, ranks, norms_trainable: bool,
           extra: float) -> tuple[float, float, dict[str, float]]:
    at_zero = layer_saved(view, settings, modes, seq_len=0, norms_trainable=norms_trainable, lora_ranks=ranks)
    at_one = layer_saved(view, settings, modes, seq_len=1, norms_trainable=norms_trainable, lora_ranks=ranks)
    linear = sum(at_zero.values()) + extra
    return linear, sum(at_one.values()) + extra - linear, at_zero


def seq2seq_activation_memory(spec: ModelSpec, settings: ActivationSettings, plan: TrainablePlan, *,
                              checkpointing: str, offload: bool, seq_len: int,
                              target_len: int | None) -> ActivationMemory:
    """Activation coefficients per source token of an encoder-decoder step (see the module docstring)."""
    ratio = (target_len or seq_len) / seq_len
    if checkpointing == "selective":
        settings = replace(settings, attention="flash")
    by_name = {g.name: g for g in spec.param_groups}
    ranks = lora_ranks(plan)
    layer = spec.num_layers - 1
    norms = plan.norms_trainable(layer)
    encoder, enc_names = stack_view(spec, "encoder")
    decoder, dec_names = stack_view(spec, "decoder")
    wo = next((g for g in spec.linear_groups() if g.role == "down" and g.name.startswith("layers.")), None)
    wo_input = wo is not None and plan.linear_mode(wo, layer) != "frozen"
    inner = _inner_dropout(spec, settings, wo_input)
    enc1, enc2, enc_saved = _split(encoder, settings, _modes(plan, enc_names, by_name, layer), ranks, norms, inner)
    dec1, dec2, dec_saved = _split(decoder, settings, _modes(plan, dec_names, by_name, layer), ranks, norms, inner)
    cross_t, cross_pair, cross_s, shared = _cross_attention(spec, settings, plan, layer, norms)
    h, r = spec.hidden_size, settings.residual_bytes
    n_enc = spec.num_encoder_layers if plan.mode != "freeze" else 0
    n_dec = spec.num_layers - plan.first_grad_layer
    # per source token (s) and per source token per source token (s^2), target tokens t = ratio x s
    enc_layer = (enc1, enc2)
    dec_layer = (ratio * (dec1 + cross_t) + cross_s, ratio * ratio * dec2 + ratio * cross_pair)
    model_level = ratio * model_level_bytes(spec, settings, plan) + (r * h if shared else 0.0)
    if n_enc:
        model_level += _encoder_model_level(spec, settings)
    if spec.embeddings.norm:  # BART layernorm_embedding of the decoder: input + mean/rstd
        model_level += ratio * (r * h + 8)
    largest = max((enc_layer, dec_layer), key=lambda part: part[0] + part[1] * seq_len)
    checkpoint = r * h
    if checkpointing == "full":
        unit = (checkpoint, 0.0)
        stored = (checkpoint * (n_enc + ratio * n_dec), 0.0)
        recompute = largest
    else:
        unit = largest
        stored = (n_enc * enc_layer[0] + n_dec * dec_layer[0], n_enc * enc_layer[1] + n_dec * dec_layer[1])
        recompute = (0.0, 0.0)
    host = (0.0, 0.0)
    if offload:
        host = stored
        stored = (min(stored[0], 2 * unit[0]), min(stored[1], 2 * unit[1]))
    saved_one = {**{f"encoder.{k}": v for k, v in enc_saved.items()}, **dec_saved}
    layers = n_enc + n_dec
    per_layer_tensors = max(len(enc_saved), len(dec_saved) + 6)
    live = layers + per_layer_tensors if checkpointing == "full" else layers * per_layer_tensors
    return ActivationMemory(
        stored_per_token=stored[0] + model_level, stored_per_token_sq=stored[1],
        recompute_per_token=recompute[0], recompute_per_token_sq=recompute[1],
        workspace_per_token=backward_workspace(spec, settings, max(seq_len, target_len or seq_len))
        * max(1.0, ratio) if layers else 0.0,
        host_per_token=host[0], host_per_token_sq=host[1], layer_per_token=largest[0],
        checkpoint_per_token=checkpoint, grad_layers=layers,
        largest_tensors=tuple(sorted(saved_one.items(), key=lambda kv: -kv[1])[:6]), live_tensors=live,
        layer_tensors_per_token=tuple(enc_saved.values()))
