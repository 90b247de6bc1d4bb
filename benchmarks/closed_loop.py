"""Measure the closed loop (issue 11): predictor error on a fixed held-out set, evaluations to a verified
recommendation, wall time.

Per model — MiniLM (all-MiniLM-L6-v2, evaluator fidelity) and the tiny causal LM (the executors' fixture,
evaluator perplexity) — with fixed seeds, on this machine (deployment target ``local``):

1. **Profile**: ``executors.run_profile(model)`` (cached on disk by model and settings; the time printed
   says whether it was measured now or read from the cache).
2. **Held-out set** (fixed, independent of the loop's run): ``benchmarks/data/closed_loop_heldout/<model>.json``.
   Drawn once, with ``--heldout-seed``, from every point the loop can propose: the executable space
   (``search.space.executable_space``) with the profile's per-block allocation at each weight budget
   (``search.allocator``, as ``run_search`` does), times every sparsity option (and student, with
   ``--students``). Points that *execute* identically are one point (:func:`executed_form`: each remaining
   block's formats as the executors apply them, blocks removed by whole-layer pruning being those the
   profile's influence says the executor removes; ``block_levels`` are not applied), and only one of them is
   drawn. The draw is stratified (:func:`select_heldout`): round robin over the techniques
   (:func:`technique`), and within each technique over bands of the quality loss predicted from the
   profile alone (:data:`LOSS_BANDS`). The file records the model fingerprint (a hash of config.json
   and the weight files' contents), the space fingerprint, the seed and each strategy's JSON; later
   runs reuse it, and it is drawn again only with ``--regenerate-heldout`` or when either fingerprint
   changed (the run says so, and the old file is kept beside it).
3. **Loop**: ``run_search(model, local constraints, profile=..., execute_top=K, rounds=R)`` in a fresh
   directory ``<out>/run-<UTC time>/<model>`` (``--reuse-loop DIR`` resumes the loop studies of an
   earlier run directory instead: the same loop measurements, so with the same code the held-out figures
   repeat exactly, and two predictor versions can be compared on one loop run), on the same space, without distilled students unless
   ``--students`` (a student is trained for each candidate: minutes per candidate on this CPU).
   Reported: the round reports, the real evaluations until the top-ranked candidate is verified
   (measured, every constraint met), and whether the verified recommendation's measured quality lies
   inside the 80% interval predicted for it before it was measured.
4. **Held-out measurements**: executed for real like the loop's candidates (``search.loop.execute``, the
   loop's evaluator and device) and cached under ``<fitplan cache>/closed_loop_heldout/<model
   fingerprint>/<evaluator key>-<device>/``, one JSON file per strategy key, so a re-run executes
   nothing ("read from cache"). An entry of another model fingerprint, strategy or evaluator is never
   read.
5. **Predictors on the held-out set**: priors only (no profile, no calibration); the profile alone; the
   profile + the calibration records of round 1; the profile + rounds 1 and 2. A held-out candidate
   that the loop happened to measure (the same executed model) in a round a predictor was fitted on is
   left out of that predictor's scores (it was training data): ``n`` per predictor says how many were
   scored. Quality-loss MAE (points), Spearman of predicted vs measured loss, 80%-interval coverage,
   and the median |error| of memory and latency; the held-out table prints each candidate's measured
   quality next to the profile predictor's prediction.

Targets (issue 11): quality-loss MAE at least halved by profile + calibration vs priors (compared on the
candidates both are scored on); Spearman >= 0.8 on held-out candidates; a verified recommendation within
12 real evaluations; the recommendation's measured quality inside its predicted interval. The script
prints each as met / missed and writes everything to ``<run directory>/closed_loop.json``.

Usage: python benchmarks/closed_loop.py [--models minilm,tiny] [--k 4] [--rounds 3] [--held-out 16]
[--heldout-seed 0] [--regenerate-heldout] [--trials 60] [--seed 0] [--out DIR] [--reuse-loop DIR].
Set OMP_NUM_THREADS=1 on a shared machine (timings are then noisy). Cost on this machine (2 cores shared by
5 engineers, OMP_NUM_THREADS=1, H=16): first run with an empty measurement cache 975 s for both models
(MiniLM: loop 142 s + 16 held-out executions 354 s; tiny LM: 193 s + 279 s); a re-run 412 s (held-out
measurements read from the cache); ``--reuse-loop`` 9 s.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The lab's constraints (issue 11: "fitplan lab <MiniLM dir> --max-memory-gb 1 --max-accuracy-loss 3").
MODELS = {
    "minilm": {"evaluator": "fidelity", "constraints": {"max_memory_gb": 1.0, "max_accuracy_loss": 3.0}},
    "tiny": {"evaluator": "perplexity", "constraints": {"max_memory_gb": 1.0, "max_accuracy_loss": 3.0}},
}
MAX_EVALUATIONS = 12
HELDOUT_DIR = ROOT / "benchmarks" / "data" / "closed_loop_heldout"
HELDOUT_FORMAT = "fitplan.closed_loop_heldout"
HELDOUT_VERSION = 1
MEASUREMENT_FORMAT = "fitplan.closed_loop_heldout_measurement"
# Techniques a held-out set spans (round robin, in this order).
TECHNIQUES = ("quantization", "mixed precision", "+ unstructured/N:M", "+ structured", "+ student")
# Upper edges of the predicted quality-loss bands (points) a technique's picks are spread over.
LOSS_BANDS = (2.0, 5.0, 15.0, 40.0)
# The predictor states scored on the held-out set: (label, uses the profile, predictor state). State j is
# fitted on the loop's measurements of rounds < j (search.loop.Predictors).
PREDICTORS = (("priors only", False, 1), ("profile", True, 1), ("profile + 1 round", True, 2),
              ("profile + 2 rounds", True, 3))


class BenchmarkError(Exception):
    """A user mistake (flags that contradict the saved held-out set, ...): one line, exit code 2."""


# -- what a strategy executes, and the stratified draw (pure) ---------------------------------------------
def executed_form(strategy: Any, num_blocks: int, influence: Any = None) -> str:
    """Canonical JSON of what the executors actually run for ``strategy`` on a model of ``num_blocks``.

    Quantization: each remaining block's attention and MLP format as ``executors/steps/quantize.py``
    applies it (``planner.strategy.QuantizationSpec.block_format``: the per-block override by original block index,
    else ``keep_format`` for kept blocks, else the group's format; the blocks a depth change leaves are
    ``planner.models.derive.original_blocks``, whole-layer pruning by the profile's ``influence`` when
    given), the embeddings' and lm_head's formats and the compute dtype (the
    KV-cache dtype is never applied). Sparsity: the spec without ``block_levels`` (not applied). Students
    and low rank as given. Two strategies with equal forms run the same model and measure the same.
    """
    data: dict[str, Any] = {}
    from planner.models.derive import original_blocks

    quant = strategy.quantization
    if quant is not None:
        original = original_blocks(num_blocks, strategy, influence) or list(range(num_blocks))
        blocks = [[quant.block_format(position, group, len(original), block) for group in ("attention", "mlp")]
                  for position, block in enumerate(original)]
        data["quantization"] = {"blocks": blocks, "embeddings": quant.embeddings, "lm_head": quant.lm_head,
                                "compute_dtype": quant.compute_dtype}
    if strategy.sparsity is not None:
        data["sparsity"] = strategy.sparsity.model_dump(mode="json", exclude={"block_levels"})
    for part in ("distillation", "low_rank"):
        value = getattr(strategy, part)
        if value is not None:
            data[part] = value.model_dump(mode="json")
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def technique(strategy: Any) -> str:
    """The technique stratum of a strategy (one of :data:`TECHNIQUES`)."""
    if strategy.distillation is not None or strategy.low_rank is not None:
        return "+ student"
    if strategy.sparsity is not None:
        return "+ structured" if strategy.sparsity.structured else "+ unstructured/N:M"
    quant = strategy.quantization
    if quant is not None and quant.block_formats and any(b.format != quant.weights for b in quant.block_formats):
        return "mixed precision"
    return "quantization"


def loss_band(loss: float | None) -> int:
    """Index of the predicted quality-loss band (:data:`LOSS_BANDS`; unknown loss: the last band)."""
    if loss is None:
        return len(LOSS_BANDS)
    return next((i for i, edge in enumerate(LOSS_BANDS) if loss < edge), len(LOSS_BANDS))


def band_label(band: int) -> str:
    low = 0.0 if band == 0 else LOSS_BANDS[band - 1]
    return f"{low:g}-{LOSS_BANDS[band]:g}" if band < len(LOSS_BANDS) else f">={low:g}"


@dataclass(frozen=True)
class Point:
    """One candidate of the held-out pool: its key, what it executes, its stratum and predicted loss."""

    key: str
    executed: str
    technique: str
    predicted_loss: float | None
    summary: str = ""

    @property
    def band(self) -> int:
        return loss_band(self.predicted_loss)


def select_heldout(points: list[Point], size: int, seed: int) -> list[Point]:
    """A stratified, seeded draw of ``size`` points of which no two execute identically.

    Round robin over the techniques (:data:`TECHNIQUES` order); each turn takes the technique's next point
    from the quality-loss band it has drawn least from so far (ties: the band drawn least overall, then a
    seeded shuffle), skipping points whose executed form (:func:`executed_form`) is already in the set, so
    a stratum keeps its own representative of a form it shares with another (an allocation that runs
    like a single format). Every technique and band present in the pool is covered once ``size`` allows
    it. The same pool (in any order) and seed give the same set.
    """
    rng = random.Random(seed)
    cells: dict[str, dict[int, list[Point]]] = {}
    for point in sorted({p.key: p for p in points}.values(), key=lambda p: p.key):
        cells.setdefault(point.technique, {}).setdefault(point.band, []).append(point)
    for name in sorted(cells):
        for band in sorted(cells[name]):
            rng.shuffle(cells[name][band])
    order = [t for t in TECHNIQUES if t in cells] + sorted(t for t in cells if t not in TECHNIQUES)
    picked: list[Point] = []
    forms: set[str] = set()
    overall: Counter[int] = Counter()
    per_technique: dict[str, Counter[int]] = {t: Counter() for t in order}

    def left(name: str, band: int) -> list[Point]:
        items = cells[name][band]
        while items and items[-1].executed in forms:
            items.pop()
        return items

    while len(picked) < size:
        progressed = False
        for name in order:
            if len(picked) >= size:
                break
            bands = [b for b in sorted(cells[name]) if left(name, b)]
            if not bands:
                continue
            rng.shuffle(bands)
            band = min(bands, key=lambda b: (per_technique[name][b], overall[b]))
            point = cells[name][band].pop()
            picked.append(point)
            forms.add(point.executed)
            per_technique[name][band] += 1
            overall[band] += 1
            progressed = True
        if not progressed:
            break
    return picked


def excluded_for(points: list[Point], loop_rounds: dict[str, int], state: int) -> set[str]:
    """Keys of the held-out points a predictor of ``state`` was fitted on: the loop measured the same
    executed model (``loop_rounds``: executed form -> earliest round that measured it) in a round < state."""
    return {p.key for p in points if loop_rounds.get(p.executed, state) < state}


# -- fingerprints ----------------------------------------------------------------------------------------
def content_fingerprint(model_dir: Path) -> str:
    """Hash of the model directory's config.json and weight files (contents, not paths or times), so the
    committed held-out file stays valid for the same model on another machine."""
    digest = hashlib.sha256()
    files = [model_dir / "config.json", *sorted(p for p in model_dir.iterdir()
                                                 if p.is_file() and p.suffix in (".safetensors", ".bin"))]
    for path in files:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def space_fingerprint(space: Any) -> str:
    return hashlib.sha256(space.canonical().encode()).hexdigest()[:16]


# -- the held-out file -----------------------------------------------------------------------------------
def heldout_path(name: str) -> Path:
    return HELDOUT_DIR / f"{name}.json"


def read_heldout(path: Path) -> dict[str, Any] | None:
    """The saved held-out set (None when there is none); a file of another format is a BenchmarkError."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise BenchmarkError(f"held-out file {path} is unreadable ({error}); delete it or pass "
                             "--regenerate-heldout") from None
    if data.get("format") != HELDOUT_FORMAT or data.get("version") != HELDOUT_VERSION:
        raise BenchmarkError(f"held-out file {path} is not a {HELDOUT_FORMAT} v{HELDOUT_VERSION} file; pass "
                             "--regenerate-heldout to draw a new set")
    return data


def reuse_decision(saved: dict[str, Any] | None, *, model_fp: str, space_fp: str, seed: int, size: int,
                   regenerate: bool) -> tuple[bool, str]:
    """(draw a new set?, why). Flags that contradict a file that is still valid are a BenchmarkError."""
    if regenerate:
        return True, "drawn anew (--regenerate-heldout)"
    if saved is None:
        return True, "drawn now (no saved set)"
    if saved["model_fingerprint"] != model_fp:
        return True, (f"drawn anew: the model changed (fingerprint {saved['model_fingerprint']} in the file, "
                      f"{model_fp} now)")
    if saved["space_fingerprint"] != space_fp:
        return True, (f"drawn anew: the search space changed (fingerprint {saved['space_fingerprint']} in the "
                      f"file, {space_fp} now)")
    if saved["seed"] != seed or saved["size"] != size:
        raise BenchmarkError(f"the saved held-out set was drawn with --heldout-seed {saved['seed']} --held-out "
                             f"{saved['size']}, not {seed} / {size}; pass those values, or add "
                             "--regenerate-heldout to draw a new set")
    return False, f"reused (drawn {saved['created']}, seed {saved['seed']})"


def write_heldout(path: Path, data: dict[str, Any], previous: dict[str, Any] | None) -> Path | None:
    """Write the set; a replaced file is kept beside it as ``<model>.<created>.json`` (returned)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = None
    if previous is not None and path.exists():
        stamp = str(previous.get("created", "old")).replace(":", "").replace("-", "")
        kept = path.with_name(f"{path.stem}.{stamp}.json")
        if not kept.exists():
            path.replace(kept)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(data, indent=1) + "\n")
    temporary.replace(path)
    return kept


# -- the measurement cache -------------------------------------------------------------------------------
def executors_code_fingerprint() -> str:
    """Hash of the code that turns a strategy into a measured model (``executors/`` and
    ``planner/execution.py``): a measurement made by other executor code is not reused (e.g. runs from
    before the executors applied per-block formats measured every block at the main format)."""
    h = hashlib.sha256()
    for path in sorted([*(ROOT / "executors").rglob("*.py"), ROOT / "planner" / "execution.py"]):
        h.update(path.relative_to(ROOT).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


class MeasurementCache:
    """Held-out measurements on disk, one file per strategy key, under a directory of one model
    fingerprint, evaluator key and device; each file repeats those keys and the executors' code fingerprint
    and is read only if they all match."""

    def __init__(self, root: Path, *, model_fp: str, evaluator_key: str, device: str):
        self.identity = {"model_fingerprint": model_fp, "evaluator_key": evaluator_key, "device": device,
                         "executors_code": executors_code_fingerprint()}
        device_id = hashlib.sha256(device.encode()).hexdigest()[:8]
        self.directory = root / "closed_loop_heldout" / model_fp / f"{evaluator_key}-{device_id}"

    def _file(self, key: str) -> Path:
        from search.measured import digest

        return self.directory / "measurements" / f"{digest(key)}.json"

    def get(self, key: str) -> Any:
        from search.execution import Measurement

        path = self._file(key)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            if data.get("format") != MEASUREMENT_FORMAT or data.get("key") != key or any(
                    data.get(name) != value for name, value in self.identity.items()):
                return None
            return Measurement.model_validate(data["measurement"])
        except (OSError, ValueError, KeyError):
            return None

    def put(self, key: str, measurement: Any) -> None:
        path = self._file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": MEASUREMENT_FORMAT, "key": key, **self.identity,
                   "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "measurement": measurement.model_dump(mode="json")}
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(payload, indent=1))
        temporary.replace(path)


# -- the benchmark ---------------------------------------------------------------------------------------
def model_dir(name: str) -> Path:
    import executors

    if name == "minilm":
        return executors.minilm_dir()
    return Path(executors.ensure_tiny_llm(progress=True).path)


def _storage(work: Path) -> str:
    """The loop's study (run_search's default for a closed loop without a storage)."""
    return f"sqlite:///{work / 'search.db'}"


def _constraints(name: str):
    from planner.planning.constraints import Constraints

    return Constraints(deployment_target="local", **MODELS[name]["constraints"])


def _agreement(predicted, measured, low=None, high=None):
    from planner.accuracy.agreement import predictor_agreement

    return predictor_agreement(predicted, measured, low=low, high=high)


def score(predictions: list, measurements: list) -> dict:
    """Quality-loss MAE / Spearman / coverage, memory and latency median |error| % of one predictor."""
    ok = [(p, m) for p, m in zip(predictions, measurements)
          if m.status == "ok" and m.quality_retained_pct is not None]
    quality = _agreement([100 - p.quality_retained_pct for p, _ in ok], [100 - m.quality_retained_pct for _, m in ok],
                         low=[100 - p.quality_high_pct for p, _ in ok], high=[100 - p.quality_low_pct for p, _ in ok])
    memory = _agreement([100 * (p.memory_gib / m.memory_gib - 1) if p.memory_gib and m.memory_gib else None
                         for p, m in ok], [0.0] * len(ok))
    latency = _agreement([100 * (p.latency_ms / m.latency_ms - 1) if p.latency_ms and m.latency_ms else None
                          for p, m in ok], [0.0] * len(ok))
    return {"n": quality.n, "mae": quality.mae, "spearman": quality.spearman, "coverage": quality.coverage,
            "memory_pct": memory.median_abs_error, "latency_pct": latency.median_abs_error}


def loop_space(spec: Any, constraints: Any, students: bool):
    """The space the loop searches (run_search's closed-loop space with the profile's weight budgets)."""
    from search.run import DEFAULT_BIT_BUDGETS
    from search.space import executable_space

    space = executable_space(spec, constraints).model_copy(update={"bit_budgets": DEFAULT_BIT_BUDGETS})
    if not students:
        space = space.model_copy(update={"distill_depths": (1.0,), "distill_widths": (1.0,)})
    return space


def loop_points(spec: Any, space: Any, profile: Any):
    """Every strategy of the space: each point with a single weight format (``SearchSpace.points``, what a
    search without a profile proposes), and the profile's per-block allocation at each reachable weight
    budget (as run_search's allocator makes it, what the profiled loop proposes) times every other knob.
    Yields (origin, strategy), origin 'uniform' or the budget in bits."""
    from search.allocator import BlockAllocator

    plain = space.model_copy(update={"bit_budgets": ()})
    for point in plain.points():
        yield "uniform", plain.strategy(**point)
    allocator = BlockAllocator(spec, profile, tuple(f for f in space.weight_formats if f != "none"))
    knobs = sorted({(p["sparsity"], p["sparsity_level"] or 0.0, p["distill_depth"], p["distill_width"], p["low_rank"])
                    for p in space.points()})
    for bits in space.bit_budgets:
        allocation = allocator.allocate(allocator.bytes_for_bits(bits)) if bits >= allocator.min_bits() - 1e-9 else None
        if allocation is None:
            continue
        for pattern, level, depth, width, rank in knobs:
            yield bits, space.strategy(allocation=allocation, allocator=allocator, sparsity=pattern,
                                       sparsity_level=level or None, distill_depth=depth, distill_width=width,
                                       low_rank=rank)


def draw_heldout(name: str, spec: Any, space: Any, profile: Any, make_scorer: Any, *, model_fp: str,
                 space_fp: str, seed: int, size: int) -> dict[str, Any]:
    """A new held-out set (the file's content): the stratified draw over the space's points."""
    from search.loop import figures
    from search.objective import strategy_key

    scorer = make_scorer(True)(None)  # the profile alone: independent of any loop run
    influence = profile.block_influence()
    points, strategies, origins = [], {}, {}
    for origin, strategy in loop_points(spec, space, profile):
        key = strategy_key(strategy)
        if strategy.is_identity or key in strategies:
            continue
        predicted = figures(scorer.row(strategy)).quality_retained_pct
        points.append(Point(key=key, executed=executed_form(strategy, spec.num_layers, influence),
                            technique=technique(strategy),
                            predicted_loss=None if predicted is None else 100.0 - predicted,
                            summary=strategy.summary()))
        strategies[key] = strategy
        origins[key] = origin if origin == "uniform" else f"allocated at {origin:g} bits"
    chosen = select_heldout(points, size, seed)
    return {"format": HELDOUT_FORMAT, "version": HELDOUT_VERSION, "model": name, "model_name": spec.name,
            "model_fingerprint": model_fp, "space_fingerprint": space_fp, "space": space.record(),
            "profile": {"fingerprint": profile.model.fingerprint, "created": profile.created},
            "seed": seed, "size": size,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "pool": {"points": len(points), "executed_distinct": len({p.executed for p in points})},
            "strata": {"techniques": list(TECHNIQUES), "loss_bands_pts": list(LOSS_BANDS),
                       "band_basis": "quality loss predicted from the profile alone (no calibration)"},
            "candidates": [{"key": p.key, "summary": p.summary, "technique": p.technique,
                            "loss_band": band_label(p.band), "origin": origins[p.key],
                            "predicted_loss_pct": p.predicted_loss, "executed_form": p.executed,
                            "strategy": json.loads(strategies[p.key].to_json())} for p in chosen]}


def measure_heldout(candidates: list[dict], cache: MeasurementCache, request: Any) -> tuple[list, int, float]:
    """The measurement of every held-out candidate: from the cache, else executed now (then cached).
    Returns (measurements in order, how many were read from the cache, seconds spent executing)."""
    from search.loop import execute

    found = {c["key"]: cache.get(c["key"]) for c in candidates}
    todo = [c for c in candidates if found[c["key"]] is None]
    start = time.monotonic()
    if todo:
        cache.directory.mkdir(parents=True, exist_ok=True)
        runner = request.model_copy(update={"out_dir": str(cache.directory)})
        jobs = [{"key": c["key"], "strategy_json": c["key"], "round": 0, "trial": None} for c in todo]
        # the queue keeps every job's outcome: one queue per executors code, or it would hand back the
        # measurements of other executor code that the cache files refuse
        queue = f"heldout-{cache.identity['executors_code']}"
        for m in execute(f"sqlite:///{cache.directory / 'queue.db'}", queue, jobs, runner, progress=True):
            if m.measured:  # a job whose workers kept dying has no outcome yet: run it again next time
                cache.put(m.key, m)
                found[m.key] = m
    missing = [c["summary"] for c in candidates if found[c["key"]] is None]
    if missing:
        raise RuntimeError(f"no measurement for held-out candidate(s) {', '.join(missing)}: their workers kept dying")
    return [found[c["key"]] for c in candidates], len(candidates) - len(todo), time.monotonic() - start


def run_model(name: str, args: argparse.Namespace, work_root: Path, loop_root: Path | None) -> dict:
    import executors
    import optuna

    from planner.models import get_model
    from planner.strategy import CompressionStrategy
    from search.candidates import candidate_evaluator
    from search.loop import LoopRequest, Predictors, figures
    from search.measured import MEASURED_PREFIX, MeasuredCandidate, digest, study_items
    from search.objective import TrialScorer, default_objectives, resolve_objectives, strategy_key
    from search.run import run_search
    from search.storage import open_storage

    directory = model_dir(name)
    evaluator = MODELS[name]["evaluator"]
    constraints = _constraints(name)
    spec = get_model(directory)
    work = (loop_root or work_root) / name
    timings = {}

    start = time.monotonic()
    outcome = executors.run_profile(directory, evaluator=evaluator, progress=False)
    timings["profile"] = time.monotonic() - start
    profile = outcome.profile
    profile_note = "read from the cache" if outcome.cached else "measured now"
    space = loop_space(spec, constraints, args.students)
    objective_list = resolve_objectives(default_objectives(constraints))

    def scorer(with_profile: bool):
        def make(store):
            return TrialScorer(candidate_evaluator(spec, constraints, objective_list,
                                                   profile=profile if with_profile else None, calibration=store,
                                                   metric=evaluator), objective_list)
        return make

    # The held-out set: fixed by seed, drawn before (and independently of) the loop.
    model_fp, space_fp = content_fingerprint(directory), space_fingerprint(space)
    path = heldout_path(name)
    saved = read_heldout(path)
    draw, heldout_note = reuse_decision(saved, model_fp=model_fp, space_fp=space_fp, seed=args.heldout_seed,
                                        size=args.held_out, regenerate=args.regenerate_heldout)
    if draw:
        heldout = draw_heldout(name, spec, space, profile, scorer, model_fp=model_fp, space_fp=space_fp,
                               seed=args.heldout_seed, size=args.held_out)
        kept = write_heldout(path, heldout, saved)
        heldout_note += f"; written to {path}" + (f" (the previous set kept as {kept.name})" if kept else "")
    else:
        heldout = saved
    print(f"{name}: held-out set {heldout_note}", flush=True)
    candidates = heldout["candidates"]
    held_strategies = [CompressionStrategy.model_validate(c["strategy"]) for c in candidates]
    influence = profile.block_influence()
    held_points = [Point(key=c["key"], executed=executed_form(s, spec.num_layers, influence), technique=c["technique"],
                         predicted_loss=c["predicted_loss_pct"], summary=c["summary"])
                   for c, s in zip(candidates, held_strategies)]

    start = time.monotonic()
    result = run_search(directory, constraints, space=space, profile=profile, n_trials=args.trials, seed=args.seed,
                        execute_top=args.k, rounds=args.rounds, evaluator=evaluator, out_dir=work,
                        study_name=f"closed-loop-{name}", progress=True)
    timings["loop"] = time.monotonic() - start
    reports = result.rounds
    verified_at = next((r.evaluations for r in reports if r.recommendation_verified), None)
    study = optuna.load_study(study_name=f"closed-loop-{name}", storage=open_storage(_storage(work)))
    measured = study_items(study.user_attrs, MEASURED_PREFIX, MeasuredCandidate)
    best = result.best
    inside = None
    if best is not None and best.get("verified"):
        done = measured[digest(strategy_key(CompressionStrategy.model_validate_json(best["strategy_json"])))]
        before = done.predicted[done.round]
        inside = before.quality_low_pct <= done.quality_retained_pct <= before.quality_high_pct

    request = LoopRequest.model_validate(study.user_attrs["fitplan_loop"])
    from executors.evaluate import get_evaluator
    from executors.paths import cache_root
    from planner.planning.local import local_device

    cache = MeasurementCache(cache_root(), model_fp=model_fp,
                             evaluator_key=get_evaluator(request.evaluator, request.model_kind,
                                                         data=request.eval_data).key(),
                             device=local_device(request.device).name)
    held_measured, from_cache, seconds = measure_heldout(candidates, cache, request)
    timings["held-out"] = seconds

    # The loop's measurements, by what they executed (earliest round): a held-out candidate the loop
    # measured in a round < j trained predictor state j and is not scored for it.
    loop_rounds: dict[str, int] = {}
    for m in measured.values():
        form = executed_form(CompressionStrategy.model_validate_json(m.key), spec.num_layers, influence)
        loop_rounds[form] = min(m.round, loop_rounds.get(form, m.round))
    store = request.open_store()
    predictors = {True: Predictors(scorer(True), store, study.study_name, spec.model_type),
                  False: Predictors(scorer(False), store, study.study_name, spec.model_type)}
    table, predictions = {}, {}
    for label, with_profile, state in PREDICTORS:
        left_out = excluded_for(held_points, loop_rounds, state)
        rows = [(figures(predictors[with_profile].scorer(state).row(s)), m, p.key)
                for s, m, p in zip(held_strategies, held_measured, held_points) if p.key not in left_out]
        predictions[label] = rows
        table[label] = {**score([r[0] for r in rows], [r[1] for r in rows]), "left_out": len(left_out)}
    by_profile = {key: f.quality_retained_pct for f, _, key in predictions["profile"]}
    final_keys = {key for _, _, key in predictions["profile + 2 rounds"]}
    paired = [r for r in predictions["priors only"] if r[2] in final_keys]
    priors_paired = score([r[0] for r in paired], [r[1] for r in paired])
    return {"name": name, "dir": str(directory), "evaluator": evaluator, "constraints": MODELS[name]["constraints"],
            "profile_note": profile_note, "timings": timings, "reports": [r.model_dump() for r in reports],
            "verified_at": verified_at, "evaluations": reports[-1].evaluations if reports else 0,
            "recommendation": (best or {}).get("strategy"), "verified": bool(best and best.get("verified")),
            "inside": inside, "heldout_file": str(path), "heldout_note": heldout_note,
            "heldout_created": heldout["created"], "model_fingerprint": model_fp, "space_fingerprint": space_fp,
            "measurement_cache": str(cache.directory), "from_cache": from_cache,
            "held_out": [{"summary": c["summary"], "technique": c["technique"], "band": c["loss_band"],
                          "status": m.status, "retained_pct": m.quality_retained_pct,
                          "profile_predicted_pct": by_profile.get(p.key), "loop_round": loop_rounds.get(p.executed)}
                         for c, m, p in zip(candidates, held_measured, held_points)],
            "predictors": table, "priors_on_final_subset": priors_paired}


def _fmt(value, spec="{:.2f}") -> str:
    return "-" if value is None else spec.format(value)


def report(outcome: dict) -> list[tuple[str, bool | None, str]]:
    name = outcome["name"]
    print(f"\n== {name}: {outcome['dir']} (evaluator {outcome['evaluator']}, constraints {outcome['constraints']}, "
          "target local)")
    t = outcome["timings"]
    print(f"wall time: profile {t['profile']:.0f} s ({outcome['profile_note']}), loop {t['loop']:.0f} s, held-out "
          f"executions {t['held-out']:.0f} s ({outcome['from_cache']} of {len(outcome['held_out'])} read from cache)")
    print("round reports (the predictor of round r scored on what rounds >= r measured):")
    print(f"  {'round':>5} {'predictor':<40} {'held':>4} {'MAE':>6} {'rho':>5} {'cover':>5} {'mem%':>5} {'lat%':>5} "
          f"{'runs':>4} {'evals':>5}  recommendation")
    for r in outcome["reports"]:
        print(f"  {r['round']:>5} {r['predictor'][:40]:<40} {r['held_out']:>4} {_fmt(r['quality_loss_mae']):>6} "
              f"{_fmt(r['quality_spearman']):>5} {_fmt(r['quality_coverage'], '{:.0%}'):>5} "
              f"{_fmt(r['memory_error_pct'], '{:.1f}'):>5} {_fmt(r['latency_error_pct'], '{:.1f}'):>5} "
              f"{r['executed']:>4} {r['evaluations']:>5}  {r['recommendation']} "
              f"({'verified' if r['recommendation_verified'] else 'not verified'})")
    print(f"held-out set ({len(outcome['held_out'])}, {outcome['heldout_file']}, drawn {outcome['heldout_created']}, "
          f"model {outcome['model_fingerprint']}):")
    print(f"  {'technique':<19} {'band':>6} {'measured':>9} {'profile':>8}  strategy")
    for h in outcome["held_out"]:
        measured = f"{h['retained_pct']:.2f}%" if h["status"] == "ok" and h["retained_pct"] is not None else "failed"
        predicted = _fmt(h.get("profile_predicted_pct"), "{:.2f}%")
        loop = f"  (loop measured it in round {h['loop_round']})" if h["loop_round"] else ""
        print(f"  {h['technique']:<19} {h['band']:>6} {measured:>9} {predicted:>8}  {h['summary']}{loop}")
    print(f"  {'predictor':<20} {'n':>3} {'MAE':>6} {'rho':>5} {'cover':>5} {'mem%':>5} {'lat%':>5}")
    for label, s in outcome["predictors"].items():
        print(f"  {label:<20} {s['n']:>3} {_fmt(s['mae']):>6} {_fmt(s['spearman']):>5} "
              f"{_fmt(s['coverage'], '{:.0%}'):>5} {_fmt(s['memory_pct'], '{:.1f}'):>5} "
              f"{_fmt(s['latency_pct'], '{:.1f}'):>5}")
    priors, final = outcome["priors_on_final_subset"], outcome["predictors"]["profile + 2 rounds"]
    checks = []
    if priors["mae"] is not None and final["mae"] is not None:
        checks.append((f"{name}: quality-loss MAE halved (priors {priors['mae']:.2f} -> profile + 2 rounds "
                       f"{final['mae']:.2f} points, on the {final['n']} both score)",
                       final["mae"] <= 0.5 * priors["mae"], ""))
    else:
        checks.append((f"{name}: quality-loss MAE halved", None, "no held-out measurement"))
    checks.append((f"{name}: Spearman >= 0.8 on held-out candidates (profile + 2 rounds: "
                   f"{_fmt(final['spearman'])}, n {final['n']})",
                   None if final["spearman"] is None else final["spearman"] >= 0.8, ""))
    at = outcome["verified_at"]
    checks.append((f"{name}: verified recommendation within {MAX_EVALUATIONS} real evaluations "
                   f"({'at ' + str(at) if at else 'not verified after ' + str(outcome['evaluations'])})",
                   at is not None and at <= MAX_EVALUATIONS, ""))
    checks.append((f"{name}: recommendation's measured quality inside its predicted interval "
                   f"({outcome['recommendation']})", outcome["inside"], ""))
    return checks


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {value}")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="minilm,tiny", help="comma-separated: minilm, tiny")
    parser.add_argument("--k", type=_positive, default=4, help="candidates executed per round")
    parser.add_argument("--rounds", type=_positive, default=3)
    parser.add_argument("--held-out", type=_positive, default=16, help="size of the held-out set (used when it is "
                        "drawn; a saved set of another size needs --regenerate-heldout)")
    parser.add_argument("--heldout-seed", type=int, default=0, help="seed of the held-out draw")
    parser.add_argument("--regenerate-heldout", action="store_true", help="draw the held-out sets anew (the old "
                        "files are kept beside the new ones)")
    parser.add_argument("--trials", type=_positive, default=60, help="predicted trials of the whole loop")
    parser.add_argument("--seed", type=int, default=0, help="seed of the loop's sampler")
    parser.add_argument("--out", default=None, help="directory for the runs (each run gets its own run-<UTC time> "
                        "directory in it; default: a new temporary one)")
    parser.add_argument("--reuse-loop", default=None, metavar="DIR", help="a run directory of an earlier run "
                        "(<out>/run-...): resume its loop studies instead of running new loops (the same loop "
                        "measurements: compares predictor versions on one loop run)")
    parser.add_argument("--students", action="store_true", help="also search distilled students (slow: each "
                        "candidate trains one)")
    args = parser.parse_args()
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names:
        from hardware_db.names import did_you_mean

        hint = did_you_mean(unknown[0], MODELS) if unknown else ""
        parser.error(f"--models: unknown model(s) {', '.join(unknown) or '(none given)'}.{hint} Allowed: "
                     f"{', '.join(MODELS)}.")
    loop_root = None
    if args.reuse_loop is not None:
        loop_root = Path(args.reuse_loop).expanduser()
        missing = [m for m in names if not (loop_root / m / "search.db").is_file()]
        if missing:
            parser.error(f"--reuse-loop {args.reuse_loop}: no loop study for {', '.join(missing)} there "
                         f"(expected {loop_root / missing[0] / 'search.db'})")
    out = Path(args.out).expanduser() if args.out else Path(tempfile.mkdtemp(prefix="fitplan-closed-loop-"))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    run_dir = out / f"run-{stamp}"
    suffix = 1
    while run_dir.exists():  # never reuse an earlier run's directory
        suffix += 1
        run_dir = out / f"run-{stamp}-{suffix}"
    run_dir.mkdir(parents=True)
    print(f"run directory: {run_dir}" + (f" (loops reused from {loop_root})" if loop_root else ""))
    started = time.monotonic()
    checks = []
    outcomes = []
    from planner.errors import FitplanError

    for name in names:
        try:
            outcome = run_model(name, args, run_dir, loop_root)
        except (BenchmarkError, FitplanError) as error:
            print(f"closed_loop.py: {name}: {error}", file=sys.stderr)
            if not any(run_dir.iterdir()):
                run_dir.rmdir()  # nothing ran: leave no empty run directory behind
            return 2
        outcomes.append(outcome)
        (run_dir / "closed_loop.json").write_text(json.dumps(outcomes, indent=2, default=str))
        checks += report(outcome)
    print(f"\ntotal wall time {time.monotonic() - started:.0f} s (shared machine: timings are noisy); "
          f"results in {run_dir / 'closed_loop.json'}")
    print("targets:")
    for text, ok, why in checks:
        verdict = "n/a" if ok is None else "met" if ok else "MISSED"
        print(f"  [{verdict}] {text}{' - ' + why if why else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
