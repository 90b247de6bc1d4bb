"""``profile`` (``executors.profile``): measure a model's sensitivity to each format / sparsity level, block by block, group by
group, and write the :class:`planner.accuracy.profile.SensitivityProfile` the planner reads.

For every transformer block and module group (attention, mlp), each candidate option is applied to
that group alone and the evaluator scores the model; the result is the quality retained, % of the
uncompressed model (``retained_fraction``: compressed/baseline, or baseline/compressed for
perplexity). Each block is also removed alone (block drop). Options:

- weight formats (default :data:`DEFAULT_FORMATS`: what a search on a CPU proposes, bf16, int8, nf4,
  fp4 and hqq-int8/4/3/2 when the hqq package is installed; ``["all"]``: every runnable format): the group's Linear layers are swapped for the very modules the quantization step
  builds (``executors.steps.quantize``: a bf16 Linear casting its input, bitsandbytes Linear8bitLt /
  Linear4bit, torch's dynamic int8 Linear, HQQLinear) at fp32 compute, so the measured effect is the
  weight format's own, then the original modules are put back;
- sparsity (default unstructured 0.125, 0.25 and 0.5, 2:4; ``sparsity_method`` wanda or magnitude): the
  group's weights are masked in place with the pruning step's scores and masks
  (``executors.steps.masks``; Wanda's input norms from one calibration pass of the intact model),
  then restored from a copy;
- structured pruning (default ffn and heads at 0.125, 0.25 and 0.5; MLP groups for ffn, attention groups for
  heads): the block's channels / key-value head groups the pruning step would remove
  (``executors.steps.structured``' magnitude scores) are cut off by zeroing the output projection's
  columns that read them, which computes exactly what the pruned block computes;
- whole: each option applied to every group at once (what a uniform strategy runs), one evaluation per
  option: per-group effects need not add up, and the planner scales an option's summed effects by the
  measured ratio (:meth:`planner.accuracy.profile.SensitivityProfile.additivity`);
- block drop: a forward hook makes the block return its input (what removing it computes); each block's
  ShortGPT influence is recorded with it, computed once by the whole-layer pruning step's own code
  (:func:`executors.steps.structured.block_influence`) on the very batches that step calibrates on (the
  default training corpus, the profile's seed and :class:`~executors.steps.context.StepContext`'s batch
  count, size and length: :func:`_step_context`), so the planner predicts the blocks that step keeps.

Fast on CPU: the model is loaded once, the evaluator's data and reference outputs are computed once,
and nothing is reloaded between options. Each (group, option) is quantized once, evaluated, and put
back. An evaluation starts at the changed block: the intact model's block outputs are recorded during
the reference pass and replayed for the blocks before it (:mod:`executors.replay`; exact, guarded,
about 40% of the block passes saved), so the scores equal whole-model evaluations'. torch's threads
are lowered to the cores other processes leave idle (:func:`executors.environment.idle_threads`):
on a busy machine two threads waiting on each other made the profile several times slower. The
profile records its own cost (:class:`planner.accuracy.profile.ProfileCost`: wall time per phase,
evaluations, block passes replayed, threads). A final check compares every weight with the original.

Profiles are cached under ``<cache>/profiles/`` (``$FITPLAN_CACHE``, else ``~/.cache/fitplan``), keyed by
the model directory (path, weight files, their sizes and mtimes), its config fingerprint, the evaluator
and its data, and the settings; a re-run with the same key reuses the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from planner.accuracy.metrics import metric_family
from planner.accuracy.profile import (
    STRUCTURED_GROUP,
    BlockDrop,
    ProfileEntry,
    ProfileEvaluator,
    ProfileModel,
    ProfileCost,
    ProfileSettings,
    SensitivityProfile,
    WholeEntry,
    model_fingerprint,
    sparsity_option,
)
from planner.errors import InvalidRequestError, UnsupportedError
from planner.strategy import SPARSITY_PATTERNS, WEIGHT_FORMATS

# What a search of this model on a CPU proposes (search.space.executable_space): the weight formats the executors
# run there (bitsandbytes int8 / nf4 / fp4, HQQ 8/4/3/2-bit at the default group size, bf16 as a compression of the
# fp32 checkpoint) and its unstructured levels and 2:4. Other runnable formats (fp16, dynamic-int8, the -dq and
# HQQ -g32/-g128 variants) on request, or all of them with formats=["all"].
DEFAULT_FORMATS: tuple[str, ...] = ("bf16", "int8", "nf4", "fp4", "hqq-int8", "hqq-int4", "hqq-int3", "hqq-int2")
PROFILE_DTYPE = "fp32"  # the profile loads the model in fp32 (executors.loading.load_model) and compares with it
DEFAULT_SPARSITY: tuple[tuple[str, float], ...] = (("unstructured", 0.125), ("unstructured", 0.25), ("unstructured", 0.5),
                                                   ("2:4", 0.5), ("ffn", 0.125), ("ffn", 0.25), ("ffn", 0.5),
                                                   ("heads", 0.125), ("heads", 0.25), ("heads", 0.5))

MIN_RETAINED_PCT = 1e-3  # a group whose option destroys the model (score <= 0, NaN): recorded at this floor
PROFILE_DIR = "profiles"
REPLAY_MAX_BYTES = 2**30  # recorded block outputs kept for replay (executors.replay): at most 1 GiB ...
REPLAY_MEMORY_FRACTION = 0.1  # ... and at most this share of the available memory
_NM_PATTERNS = ("2:4", "4:8")


@dataclass
class ProfileOutcome:
    """A profile and where it came from: ``cached`` when an earlier run's file was reused."""

    profile: SensitivityProfile
    path: Path
    cached: bool
    out: Path | None = None
    notes: list[str] = field(default_factory=list)


def profile(model_dir: str | os.PathLike, *, evaluator: Any = None, data: str | os.PathLike | None = None,
            formats: Sequence[str] | None = None, sparsity: Sequence[tuple[str, float]] | None = None,
            sparsity_method: str = "wanda", block_drop: bool = True, samples: int | None = None,
            seq_len: int | None = None, device: str = "cpu", seed: int = 0, cache: bool = True,
            out: str | os.PathLike | None = None, progress: bool = False, threads: int | None = None,
            replay: bool = True) -> SensitivityProfile:
    """The sensitivity profile of the model directory ``model_dir`` (see the module docstring).

    ``evaluator``: 'perplexity' / 'fidelity' / 'accuracy' / an evaluator object (default: perplexity
    for causal LMs, fidelity for encoders); ``data``: the user's evaluation data for it. ``formats``
    (weight formats) and ``sparsity`` ((pattern, level) pairs) are the options; ``samples`` /
    ``seq_len`` size the calibration set (perplexity windows x tokens; fidelity sentences x max
    tokens). ``out``: also write the JSON there (never overwritten). ``cache=False`` re-measures.
    ``threads``: torch's intra-op threads while measuring (restored after; default: torch's count lowered to
    the cores other processes leave idle: on a busy machine extra threads wait on each other).
    ``replay=False``: every evaluation runs the whole model (see :mod:`executors.replay`; same scores, slower).
    """
    return run_profile(model_dir, evaluator=evaluator, data=data, formats=formats, sparsity=sparsity,
                       sparsity_method=sparsity_method, block_drop=block_drop, samples=samples, seq_len=seq_len,
                       device=device, seed=seed, cache=cache, out=out, progress=progress, threads=threads,
                       replay=replay).profile


def run_profile(model_dir: str | os.PathLike, *, evaluator: Any = None, data: str | os.PathLike | None = None,
                formats: Sequence[str] | None = None, sparsity: Sequence[tuple[str, float]] | None = None,
                sparsity_method: str = "wanda", block_drop: bool = True, samples: int | None = None,
                seq_len: int | None = None, device: str = "cpu", seed: int = 0, cache: bool = True,
                out: str | os.PathLike | None = None, progress: bool = False, threads: int | None = None,
                replay: bool = True) -> ProfileOutcome:
    """:func:`profile`, returning the :class:`ProfileOutcome` (path, cache hit, notes)."""
    from executors.evaluate import check_evaluation_data, get_evaluator
    from executors.evaluate.base import fingerprint
    from executors.loading import model_kind, read_config
    from executors.paths import cache_root, model_fingerprint as directory_fingerprint

    from planner.models.directory import check_model_dir

    check_model_dir(model_dir)
    root = Path(model_dir).expanduser()
    kind = model_kind(root)
    config = read_config(root)
    out_path = Path(out).expanduser() if out is not None else None
    if out_path is not None and out_path.exists():
        raise InvalidRequestError(f"--out {out}: the file exists; profiles are never overwritten, choose another path.")
    if threads is not None and not (isinstance(threads, int) and 1 <= threads <= 1024):
        raise InvalidRequestError(f"--threads {threads}: use a positive number of threads.")
    if sparsity_method not in ("wanda", "magnitude"):
        raise InvalidRequestError(f"sparsity_method {sparsity_method!r}: use 'wanda' or 'magnitude'.")
    chosen = get_evaluator(evaluator, kind, data=data)
    chosen = _sized(chosen, samples, seq_len)
    check_evaluation_data(chosen, root)
    notes: list[str] = []
    options = _format_options(formats, notes) + _sparsity_options(sparsity)
    if not options and not block_drop:
        raise InvalidRequestError("nothing to profile: no formats, no sparsity levels and no block drop.")
    settings = ProfileSettings(samples=_samples(chosen), seq_len=_seq_len(chosen), seed=seed, device=device,
                               sparsity_method=sparsity_method)
    key = fingerprint([directory_fingerprint(root), model_fingerprint(config), chosen.key(), options, block_drop,
                       settings.model_dump(mode="json"), "whole", "influence"])
    path = cache_root() / PROFILE_DIR / f"{model_fingerprint(config)}-{key}.json"
    if cache and path.is_file():
        try:
            found = SensitivityProfile.load(path)
        except Exception as error:  # a damaged cache file is measured again, never trusted
            notes.append(f"cached profile {path} unreadable ({error}); measured again")
            path.unlink()
        else:
            return ProfileOutcome(found, path, cached=True, out=_copy_out(found, out_path), notes=notes)
    with _threads(threads):
        measured = _measure(root, kind, config, chosen, options, block_drop, settings, progress, notes, replay=replay)
    if path.exists():  # cache=False re-measured: the fresh profile replaces the cached one
        path.unlink()
    measured.save(path)
    return ProfileOutcome(measured, path, cached=False, out=_copy_out(measured, out_path), notes=notes)


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` for the block (None: torch's count, lowered to the cores
    other processes leave idle, :func:`executors.environment.idle_threads`)."""
    from executors._imports import import_torch
    from executors.environment import idle_threads

    torch = import_torch()
    before = torch.get_num_threads()
    torch.set_num_threads(count if count is not None else idle_threads(before))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _copy_out(found: SensitivityProfile, out_path: Path | None) -> Path | None:
    return found.save(out_path) if out_path is not None else None


# -- options -----------------------------------------------------------------------------------------
def _format_options(formats: Sequence[str] | None, notes: list[str]) -> list[str]:
    from executors.steps.quantize import UNSUPPORTED_FORMATS, runnable_formats

    explicit = formats is not None
    chosen = list(DEFAULT_FORMATS if formats is None else formats)
    if chosen == ["all"]:
        explicit, chosen = False, _profilable()
    out = []
    for fmt in chosen:
        if fmt not in WEIGHT_FORMATS:
            from hardware_db.names import did_you_mean

            raise InvalidRequestError(f"unknown weight format {fmt!r}.{did_you_mean(fmt, list(WEIGHT_FORMATS))} "
                                      f"Profilable: {', '.join(_profilable())}.")
        if fmt == PROFILE_DTYPE:
            raise InvalidRequestError(f"format {fmt!r}: the profile measures against the model loaded in "
                                      f"{PROFILE_DTYPE}, so it changes nothing; profilable: {', '.join(_profilable())}.")
        if fmt in UNSUPPORTED_FORMATS or fmt not in runnable_formats():
            raise UnsupportedError(f"weight format {fmt!r} cannot run here: "
                                   f"{UNSUPPORTED_FORMATS.get(fmt, 'no executor for it')}.")
        if fmt.startswith("hqq-") and not _has_hqq():
            if explicit:
                raise UnsupportedError(f"format {fmt!r} needs the hqq package: pip install hqq (from a fitplan "
                                       f"checkout: pip install \".[exec]\").")
            notes.append(f"{fmt} skipped: the hqq package is not installed")
            continue
        out.append(fmt)
    return out


def _profilable() -> list[str]:
    from executors.steps.quantize import runnable_formats

    return [f for f in runnable_formats() if f != PROFILE_DTYPE]


def _has_hqq() -> bool:
    import importlib.util

    return importlib.util.find_spec("hqq") is not None


def _sparsity_options(sparsity: Sequence[tuple[str, float]] | None) -> list[str]:
    out = []
    for pattern, level in (DEFAULT_SPARSITY if sparsity is None else sparsity):
        if pattern not in SPARSITY_PATTERNS or pattern == "layers":
            raise InvalidRequestError(f"sparsity pattern {pattern!r}: the profile measures unstructured, 2:4, 4:8, "
                                      f"ffn and heads; whole layers are the block-drop entries.")
        if pattern in _NM_PATTERNS:
            n, m = (int(x) for x in pattern.split(":"))
            level = 1 - n / m
        if not 0 < float(level) < 1:
            raise InvalidRequestError(f"sparsity level {level!r}: must be between 0 and 1 (exclusive).")
        out.append(sparsity_option(pattern, float(level)))
    return list(dict.fromkeys(out))


def parse_sparsity(text: str) -> list[tuple[str, float]]:
    """``'0.25,0.5,2:4'`` -> [('unstructured', 0.25), ('unstructured', 0.5), ('2:4', 0.5)]."""
    out = []
    for item in (part.strip() for part in text.split(",") if part.strip()):
        if item in _NM_PATTERNS:
            n, m = (int(x) for x in item.split(":"))
            out.append((item, 1 - n / m))
            continue
        try:
            out.append(("unstructured", float(item)))
        except ValueError:
            raise InvalidRequestError(f"sparsity {item!r}: use unstructured levels (0.25, 0.5) or 2:4 / 4:8, "
                                      f"comma-separated.") from None
    return out


# -- evaluator sizing --------------------------------------------------------------------------------
def _sized(evaluator: Any, samples: int | None, seq_len: int | None) -> Any:
    """The evaluator on the profile's calibration set (perplexity: ``samples`` windows of ``seq_len``
    tokens; fidelity: the first ``samples`` sentences at ``seq_len`` tokens). By default the evaluator's own
    evaluation set, the one ``executors.execute`` scores a candidate on: an entry is then the very quantity a
    run measures. On a smaller subset the entries of a model that a format barely hurts are mostly the
    subset's noise (the tiny causal LM: 8 of the 32 perplexity windows put the summed hqq-int2 effects at
    99.68% retained, all 32 at 97.93%, and the run of the whole-model hqq-int2 measures 97.97%)."""
    for name, value in (("samples", samples), ("seq_len", seq_len)):
        if value is not None and value < 1:
            raise InvalidRequestError(f"{name} must be a positive integer, got {value}.")
    if evaluator.name == "perplexity":
        length = seq_len or evaluator.seq_len
        tokens = samples * length if samples else evaluator.max_tokens // evaluator.seq_len * length
        return dataclasses.replace(evaluator, seq_len=length, max_tokens=tokens)
    if evaluator.name == "fidelity":
        texts = evaluator.texts
        count = samples or len(texts)
        sentences = tuple(texts[:max(count, 2)]) if count < len(texts) else None
        changes: dict[str, Any] = {"max_length": seq_len or evaluator.max_length}
        if sentences is not None:
            changes.update(sentences=sentences, data=None)
        return dataclasses.replace(evaluator, **changes)
    return evaluator


def _samples(evaluator: Any) -> int | None:
    if evaluator.name == "perplexity":
        return evaluator.max_tokens // evaluator.seq_len
    if evaluator.name == "fidelity":
        return len(evaluator.texts)
    return None


def _seq_len(evaluator: Any) -> int | None:
    return {"perplexity": getattr(evaluator, "seq_len", None),
            "fidelity": getattr(evaluator, "max_length", None)}.get(evaluator.name)


# -- measuring ---------------------------------------------------------------------------------------
def _measure(root: Path, kind: str, config: dict, evaluator: Any, options: list[str], block_drop: bool,
             settings: ProfileSettings, show_progress: bool, notes: list[str] | None = None, *,
             replay: bool = True) -> SensitivityProfile:
    """Measure every (block, group, option) entry and every block drop (see the module docstring).

    ``replay``: evaluations start at the changed block from the intact model's recorded block outputs
    (:mod:`executors.replay`; the scores equal full evaluations'); False evaluates the whole model each time.
    """
    from executors._imports import import_torch
    from executors.evaluate.base import retained_fraction
    from executors.loading import load_model, resolve_device
    from executors.replay import BlockReplay, ReplayMismatch

    notes = notes if notes is not None else []
    torch = import_torch()
    torch.manual_seed(settings.seed)
    start = time.monotonic()
    device = resolve_device(settings.device or "cpu")
    loaded = load_model(root, device=device)
    model, tokenizer = loaded.model, loaded.tokenizer
    load_seconds = time.monotonic() - start
    groups = _block_groups(model)
    blocks = _blocks(model)
    n_blocks = len(groups)
    began = time.monotonic()
    recorder = BlockReplay(blocks, max_bytes=_replay_budget()) if replay and n_blocks > 1 else None
    with recorder.recording() if recorder is not None else contextlib.nullcontext():
        reference = evaluator.reference(model, tokenizer)
    if recorder is not None and not recorder.starts:
        notes.append(f"block outputs exceed the replay budget ({_replay_budget() / 2**20:.0f} MiB): every "
                     f"evaluation runs the whole model")
        recorder = None
    reference_seconds = time.monotonic() - began
    checksum = _checksum(model)
    began = time.monotonic()
    norms = _wanda_norms(model, loaded, groups, settings) if any(o.startswith("sparsity:") for o in options) \
        and settings.sparsity_method == "wanda" else {}
    influence = _influence(model, loaded, settings) if block_drop else None
    calibration_seconds = time.monotonic() - began
    spent = {"apply": 0.0, "evaluate": 0.0, "evaluations": 1, "passes": 0, "replayed": 0}

    def retained(score: float) -> float:
        value = 100.0 * retained_fraction(score, reference.value, evaluator.higher_is_better)
        return value if value == value and value > MIN_RETAINED_PCT else MIN_RETAINED_PCT  # NaN / <= 0: floor

    def score(block: int) -> float:
        """The evaluator's score of the model as it is now, whose first change is in ``block``."""
        nonlocal recorder
        began, calls_before = time.monotonic(), calls[0]
        first = recorder.start_for(block) if recorder is not None else 0
        try:
            with recorder.starting_at(first) if first else contextlib.nullcontext():
                value = evaluator.evaluate(model, tokenizer, reference).value
        except ReplayMismatch as error:  # the evaluator is not repeatable call by call: evaluate in full
            notes.append(f"replay disabled ({error}); every evaluation runs the whole model")
            recorder, first = None, 0
            value = evaluator.evaluate(model, tokenizer, reference).value
        spent["evaluate"] += time.monotonic() - began
        spent["evaluations"] += 1
        spent["passes"] += (calls[0] - calls_before) * n_blocks
        spent["replayed"] += (calls[0] - calls_before) * first
        return value

    calls = [0]  # forward calls of the first block (replayed or not): block passes = calls x blocks
    counter = blocks[0].register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    entries: list[ProfileEntry] = []
    drops: list[BlockDrop] = []
    whole: list[WholeEntry] = []
    work = [(b, g, o) for b in range(n_blocks) for g in ("attention", "mlp") if groups[b][g] for o in options
            if STRUCTURED_GROUP.get(_pattern(o), g) == g]
    total = len(work) + len(options) + (n_blocks if block_drop else 0)
    with _progress(show_progress, total, f"profiling {root.name}") as advance:
        for block, group, option in work:
            began = time.monotonic()
            value = None
            with _applied(model, groups[block][group], option, settings.sparsity_method, norms, device,
                          block) as ok:
                spent["apply"] += time.monotonic() - began
                if ok:
                    value = score(block)
                applied_until = time.monotonic()
            spent["apply"] += time.monotonic() - applied_until  # restoring
            if value is not None:
                entries.append(ProfileEntry(block=block, group=group, option=option, retained_pct=retained(value),
                                            seconds=round(time.monotonic() - began, 4)))
            advance(f"block {block} {group} {option}")
        for option in options:  # every group at once, as a uniform strategy applies it
            began = time.monotonic()
            value = None
            with contextlib.ExitStack() as applied:
                done = [applied.enter_context(_applied(model, groups[b][g], option, settings.sparsity_method, norms,
                                                       device, b)) for b, g, o in work if o == option]
                spent["apply"] += time.monotonic() - began
                if any(done):
                    value = score(0)
            if value is not None:
                whole.append(WholeEntry(option=option, retained_pct=retained(value),
                                        seconds=round(time.monotonic() - began, 4)))
            advance(f"every block {option}")
        if block_drop:
            for block in range(n_blocks):
                began = time.monotonic()
                with _dropped(blocks[block]):
                    value = score(block)
                drops.append(BlockDrop(block=block, retained_pct=retained(value),
                                       seconds=round(time.monotonic() - began, 4), influence=influence[block]))
                advance(f"block {block} dropped")
    counter.remove()
    if _checksum(model) != checksum:
        raise RuntimeError("profiling changed the model's weights (a restore failed); the profile is discarded.")
    family = metric_family(evaluator.metric) or metric_family(evaluator.name) or "accuracy"
    cost = ProfileCost(evaluations=spent["evaluations"], load_seconds=round(load_seconds, 3),
                       reference_seconds=round(reference_seconds, 3),
                       calibration_seconds=round(calibration_seconds, 3), apply_seconds=round(spent["apply"], 3),
                       evaluate_seconds=round(spent["evaluate"], 3), block_passes=spent["passes"],
                       block_passes_replayed=spent["replayed"], threads=torch.get_num_threads())
    return SensitivityProfile(
        model=ProfileModel(name=config.get("_name_or_path") or root.resolve().name,
                           family=str(config.get("model_type", "unknown")), fingerprint=model_fingerprint(config),
                           num_blocks=n_blocks),
        evaluator=ProfileEvaluator(name=evaluator.name, metric=evaluator.metric, metric_family=family,
                                   data_fingerprint=evaluator.key(), baseline=float(reference.value)),
        settings=settings.model_copy(update={"device": device}), entries=tuple(entries), block_drop=tuple(drops),
        whole=tuple(whole),
        created=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        total_seconds=round(time.monotonic() - start, 3), cost=cost)


def _replay_budget() -> int:
    """Bytes of recorded block outputs the replay may keep: a tenth of the available memory, at most 1 GiB."""
    import psutil

    return int(min(REPLAY_MAX_BYTES, psutil.virtual_memory().available * REPLAY_MEMORY_FRACTION))


def _block_groups(model: Any) -> list[dict[str, list[str]]]:
    """Per block of the main stack: the dense Linear-like module names of its attention and MLP."""
    from executors.steps.layout import ModelLayout
    from executors.steps.linears import is_dense
    from executors.steps.quantize import _BLOCK_GROUPS

    layout = ModelLayout(model)
    groups: list[dict[str, list[str]]] = [{"attention": [], "mlp": []} for _ in range(layout.num_layers)]
    for site in layout.linear_sites():
        if site.layer is None or site.stack != layout.blocks_path or not is_dense(site.module):
            continue
        group = _BLOCK_GROUPS.get(site.component)
        if group is not None:
            groups[site.layer][group].append(site.name)
    if not any(g["attention"] or g["mlp"] for g in groups):
        raise UnsupportedError(f"no attention or MLP Linear layers found in the blocks of this "
                               f"{layout.model_type} model; nothing to profile.")
    return groups


def _blocks(model: Any) -> Any:
    from executors.steps.layout import ModelLayout

    return ModelLayout(model).blocks


def _checksum(model: Any) -> float:
    return float(sum(p.detach().double().abs().sum() for p in model.parameters()))


def _step_context(loaded: Any, settings: ProfileSettings) -> Any:
    """The StepContext a candidate run of this model gives its pruning steps (``executors.candidate``: the
    default training corpus, the run's seed, the default calibration batch count, size and length)."""
    from executors.candidate import _training_batches
    from executors.steps.context import StepContext

    return StepContext(batches=_training_batches(loaded.tokenizer, None, settings.seed), device=loaded.device,
                       seed=settings.seed)


def _wanda_norms(model: Any, loaded: Any, groups: list[dict[str, list[str]]], settings: ProfileSettings) -> dict:
    """Wanda's input-feature norms of every profiled Linear, from the pruning step's calibration batches."""
    from executors.steps.masks import input_norms

    names = [n for g in groups for names in g.values() for n in names]
    modules = {name: model.get_submodule(name) for name in names}
    return input_norms(model, modules, _step_context(loaded, settings).calibration("Wanda sparsity profile"),
                       loaded.device)


def _influence(model: Any, loaded: Any, settings: ProfileSettings) -> list[float]:
    """Each block's influence as the whole-layer pruning step computes it on the unpruned model."""
    from executors.steps.layout import ModelLayout
    from executors.steps.structured import block_influence

    batches = _step_context(loaded, settings).calibration("whole-layer pruning profile")
    return block_influence(model, ModelLayout(model), batches, loaded.device).tolist()


@contextlib.contextmanager
def _applied(model: Any, names: list[str], option: str, method: str, norms: dict, device: str,
             block: int) -> Iterator[bool]:
    """``option`` applied to the modules ``names`` (of ``block``) for the duration of the block; yields False
    when it cannot apply to them (an HQQ group size that does not divide a width, a model whose heads or MLP
    channels the pruning step cannot remove: the run would refuse it)."""
    if _pattern(option) in STRUCTURED_GROUP:
        with _removed(model, block, option) as ok:
            yield ok
    elif option.startswith("sparsity:"):
        with _masked(model, names, option, method, norms) as ok:
            yield ok
    else:
        with _swapped(model, names, option, device) as ok:
            yield ok


@contextlib.contextmanager
def _swapped(model: Any, names: list[str], fmt: str, device: str) -> Iterator[bool]:
    import torch

    from executors.steps.layout import set_module
    from executors.steps.linears import features, linear_like, weight_matrix
    from executors.steps.quantize import _quantized_module

    originals = {name: model.get_submodule(name) for name in names}
    if fmt.startswith("hqq-"):
        from planner.formats import get_format
        from planner.formats.storage import packing_problem

        spec = get_format(fmt)
        if any(packing_problem(spec, *reversed(features(m))) for m in originals.values()):
            yield False
            return
    try:
        with _quiet():
            for name, module in originals.items():
                source = linear_like(module, weight_matrix(module), module.bias)  # a copy: the original stays intact
                new, _ = _quantized_module(source, fmt, torch.float32, device)
                set_module(model, name, new)
        yield True
    finally:
        for name, module in originals.items():
            set_module(model, name, module)


def _pattern(option: str) -> str | None:
    """The sparsity pattern of a profile option ('sparsity:ffn:0.25' -> 'ffn'; None for a weight format)."""
    return option[len("sparsity:"):].rpartition(":")[0] if option.startswith("sparsity:") else None


@contextlib.contextmanager
def _removed(model: Any, block: int, option: str) -> Iterator[bool]:
    """Structured pruning of one block, as the pruning step does it (``executors.steps.structured``: the
    lowest-scoring MLP channels / key-value head groups, magnitude scores, the counts of
    ``planner.models.derive``), by zeroing the output projection's columns that read the removed channels
    or heads: the block then computes exactly what the pruned block computes, and one weight is restored."""
    import torch

    from executors.steps.layout import ModelLayout
    from executors.steps.linears import weight_matrix
    from executors.steps.structured import (_attention_rows, _attention_sites, _mlp_sites, ffn_channel_scores,
                                            head_group_scores)
    from planner.models.derive import kept_ffn_width, kept_kv_groups

    pattern = _pattern(option)
    level = float(option.rpartition(":")[2])
    layout = ModelLayout(model)
    try:
        spec = layout.require_spec(f"{pattern} pruning")
        if pattern == "ffn":
            sites = _mlp_sites(layout, layout.block_prefix(block))
            scores = ffn_channel_scores(layout, layout.block_prefix(block))
            keep = kept_ffn_width(spec.mlp.intermediate_size, 1 - level)
            columns = torch.topk(scores, len(scores) - keep, largest=False).indices if keep < len(scores) else None
            out = sites["down"]
        else:
            sites = _attention_sites(layout, block)
            scores = head_group_scores(layout, block)
            keep = kept_kv_groups(spec.num_kv_heads, level)
            gone = torch.topk(scores, len(scores) - keep, largest=False).indices.tolist() if keep < len(scores) else []
            columns = _attention_rows(layout, gone)["o"] if gone else None
            out = sites["o"]
    except (UnsupportedError, AttributeError, KeyError):
        yield False
        return
    if columns is None:  # the level removes nothing at this width
        yield False
        return
    weight = weight_matrix(out.module)
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[:, columns] = 0
        yield True
    finally:
        with torch.no_grad():
            weight.copy_(saved)


@contextlib.contextmanager
def _masked(model: Any, names: list[str], option: str, method: str, norms: dict) -> Iterator[bool]:
    import torch

    from executors.steps.linears import weight_matrix
    from executors.steps.masks import layer_prune_mask, nm_prune_mask, row_prune_mask

    pattern, _, level_text = option[len("sparsity:"):].rpartition(":")
    level = float(level_text)
    nm = tuple(int(x) for x in pattern.split(":")) if pattern in _NM_PATTERNS else None
    weights = {name: weight_matrix(model.get_submodule(name)) for name in names}
    if nm is not None:  # the pruning step skips layers whose input width is not a multiple of M
        weights = {name: w for name, w in weights.items() if w.shape[1] % nm[1] == 0}
    if not weights:
        yield False
        return
    saved = {name: w.detach().clone() for name, w in weights.items()}
    try:
        with torch.no_grad():
            for name, weight in weights.items():
                score = weight.detach().abs().float()
                if method == "wanda":
                    score = score * norms[name][None, :]
                if nm is not None:
                    mask = nm_prune_mask(score, *nm)
                elif method == "wanda":
                    mask = row_prune_mask(score, level)
                else:
                    mask = layer_prune_mask(score, level)
                weight.masked_fill_(mask, 0)
        yield True
    finally:
        with torch.no_grad():
            for name, weight in weights.items():
                weight.copy_(saved[name])


@contextlib.contextmanager
def _dropped(block: Any) -> Iterator[None]:
    """The block returns its input hidden states unchanged (what removing it from the stack computes)."""

    def identity(_module: Any, args: tuple, kwargs: dict, output: Any) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        if isinstance(output, tuple):
            return (hidden, *output[1:])
        return hidden

    handle = block.register_forward_hook(identity, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    import io
    import warnings

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _progress(enabled: bool, total: int, description: str) -> Iterator[Any]:
    """A rich progress bar on stderr (or nothing); yields ``advance()``."""
    if not enabled:
        yield lambda _done=None: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=Console(file=sys.stderr),
                  transient=True) as bar:
        task = bar.add_task(description, total=total)

        def advance(done: str | None = None) -> None:
            bar.update(task, advance=1, description=f"{description}: {done}" if done else description)

        yield advance
