"""What the execution queue (search.execution) guarantees and costs, per storage.

1. Exclusive pops: N enqueued trials popped by W concurrent workers (threads, then processes), with
   Optuna's own pop (``Study.ask`` takes a WAITING trial by setting it RUNNING if it is still WAITING) on a
   plain storage, and with the execution queue's storage (``open_storage(..., exclusive_sqlite=True)``).
   Prints how many trials were taken more than once. SQLite ignores ``SELECT ... FOR UPDATE``, so the
   plain pop can hand one trial to two workers there; PostgreSQL's row lock cannot.
2. Queue overhead: 40 no-op jobs (the stand-in executor of the tests, sleeping 0 s) through
   ``execute_jobs`` with 2 local workers, then the same call again (nothing may run twice).

PostgreSQL rows need the server binaries (a throwaway cluster, tests/services.py); without them they
are skipped with the reason. Usage: python benchmarks/execution_queue.py [--jobs 300] [--workers 4]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _pop_until_empty(url: str, exclusive: bool, out: "multiprocessing.Queue | list") -> None:
    import optuna

    from search.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="pop", storage=open_storage(url, exclusive_sqlite=exclusive))
    taken = []
    while (trial_id := study._pop_waiting_trial_id()) is not None:  # noqa: SLF001 - what Study.ask calls
        taken.append(trial_id)
    if isinstance(out, list):
        out.extend(taken)
    else:
        out.put(taken)


def duplicates(url: str, exclusive: bool, jobs: int, workers: int, mode: str) -> tuple[int, int]:
    """(trials taken more than once, trials never taken)."""
    import optuna

    from search.storage import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(url)
    try:
        optuna.delete_study(study_name="pop", storage=storage)
    except KeyError:
        pass
    study = optuna.create_study(study_name="pop", storage=storage)
    for index in range(jobs):
        study.enqueue_trial({}, user_attrs={"job": index})
    if mode == "threads":
        taken: list[int] = []
        runners = [threading.Thread(target=_pop_until_empty, args=(url, exclusive, taken)) for _ in range(workers)]
        for runner in runners:
            runner.start()
        for runner in runners:
            runner.join()
    else:
        queue = multiprocessing.get_context("fork").Queue()
        runners = [multiprocessing.get_context("fork").Process(target=_pop_until_empty, args=(url, exclusive, queue))
                   for _ in range(workers)]
        for runner in runners:
            runner.start()
        taken = [trial for _ in runners for trial in queue.get()]
        for runner in runners:
            runner.join()
    counts = Counter(taken)
    return sum(1 for c in counts.values() if c > 1), jobs - len(counts)


def overhead(url: str, directory: Path) -> str:
    from planner.strategy import CompressionStrategy, SparsitySpec
    from search.execution import ExecutionJob, execute_jobs

    os.environ["FITPLAN_TEST_JOB_S"] = "0"
    model = directory / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    out = directory / "runs"
    out.mkdir(exist_ok=True)
    jobs = [ExecutionJob.of(CompressionStrategy(sparsity=SparsitySpec(level=round(0.01 * (i + 1), 2))))
            for i in range(40)]
    options = dict(model_dir=model, out_dir=out, workers=2, executor="tests.execution_helpers:log_and_sleep",
                   heartbeat_s=1, grace_s=5, poll_s=0.2)
    start = time.monotonic()
    execute_jobs(url, "overhead", jobs, **options)
    wall = time.monotonic() - start
    start = time.monotonic()
    execute_jobs(url, "overhead", jobs, **options)
    again = time.monotonic() - start
    starts = sum(1 for line in (out / "calls.log").read_text().splitlines() if line.startswith("start"))
    return (f"40 no-op jobs, 2 local workers: {wall:.1f} s ({1000 * wall / 40:.0f} ms per job); the same call "
            f"again: {again:.2f} s; jobs started in total: {starts}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fitplan-queue-") as tmp:
        root = Path(tmp)
        backends = [("sqlite", f"sqlite:///{root / 'queue.db'}")]
        stop = None
        try:
            from tests.services import ServiceUnavailable, start_postgres

            try:
                url, stop = start_postgres(root / "pg")
                backends.append(("postgresql", url))
            except ServiceUnavailable as error:
                print(f"postgresql: skipped ({error})")
            print(f"1. {args.jobs} enqueued trials, {args.workers} concurrent workers: trials taken twice / never")
            for name, url in backends:
                for mode in ("threads", "processes"):
                    plain = duplicates(url, False, args.jobs, args.workers, mode)
                    exclusive = duplicates(url, True, args.jobs, args.workers, mode)
                    print(f"   {name:10} {mode:9}  Optuna's pop: {plain[0]:3d} / {plain[1]}   "
                          f"execution queue: {exclusive[0]:3d} / {exclusive[1]}")
            print("2. queue overhead")
            for name, url in backends:
                directory = root / f"overhead-{name}"
                directory.mkdir()
                print(f"   {name:10} {overhead(url, directory)}")
        finally:
            if stop is not None:
                stop()


if __name__ == "__main__":
    main()
