"""Results that are never lost or crossed: one directory per execution, a locked results log, flags
checked before any work, workers that die with their parent, a corrupt baseline cache recomputed."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from executors.paths import new_run_dir
from executors.result import append_jsonl

REPO = Path(__file__).resolve().parents[1]


def _minilm() -> Path:
    from executors.fixtures import minilm_dir

    return minilm_dir()


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in sys.path if p]),
                HF_HUB_OFFLINE="1")


# -- the results log and run directories ------------------------------------------------------------------
def _append_many(path: str, writer: int, lines: int) -> None:
    for number in range(lines):
        append_jsonl(path, json.dumps({"writer": writer, "n": number, "pad": "x" * 20_000}))


def test_concurrent_appends_never_interleave(tmp_path):
    log = tmp_path / "results.jsonl"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_append_many, args=(str(log), w, 60)) for w in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]  # 20 kB lines: above PIPE_BUF
    assert sorted((r["writer"], r["n"]) for r in records) == [(w, n) for w in range(4) for n in range(60)]


def _make_dirs(root: str, count: int, queue) -> None:  # noqa: ANN001
    queue.put([new_run_dir(Path(root), "same-candidate")[0] for _ in range(count)])


def test_run_directories_are_unique_across_processes(tmp_path):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    makers = [context.Process(target=_make_dirs, args=(str(tmp_path), 40, queue)) for _ in range(3)]
    for maker in makers:
        maker.start()
    ids = [run_id for _ in makers for run_id in queue.get(timeout=120)]
    for maker in makers:
        maker.join(60)
    assert len(set(ids)) == 120 == len(list((tmp_path / "same-candidate").iterdir()))


# -- flags checked before any work ---------------------------------------------------------------------------
@pytest.mark.parametrize("flags, message", [
    (["--memory-cap-gib", "0"], "--memory-cap-gib must be a positive finite number of GiB, got 0; omit it"),
    (["--memory-cap-gib", "nan"], "--memory-cap-gib must be a positive finite number of GiB, got nan"),
    (["--memory-cap-gib", "inf"], "--memory-cap-gib must be a positive finite number of GiB, got inf"),
    (["--memory-cap-gib", "-2"], "--memory-cap-gib must be a positive finite number of GiB, got -2"),
    (["--timeout", "nan"], "--timeout must be a positive finite number of seconds, got nan"),
    (["--timeout", "0"], "--timeout must be a positive finite number of seconds, got 0"),
    (["--timeout", "60", "--in-process"], "--timeout bounds the isolated process, which --in-process does not start"),
    (["--memory-cap-gib", "4", "--timeout", "9", "--in-process"], "--timeout and --memory-cap-gib bound the isolated"),
    (["--device", "gpu0"], "--device: unknown device 'gpu0'; use 'auto', 'cpu', 'cuda' or 'cuda:N'"),
])
def test_bad_run_flags_are_one_line_errors(tmp_path, capsys, flags, message):
    from planner.cli import main

    out = tmp_path / "runs"
    assert main(["run", str(_minilm()), "--quant", "nf4", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # refused before any work


def test_out_that_is_a_file_or_unwritable_is_refused_before_any_work(tmp_path, capsys):
    from planner.cli import main

    a_file = tmp_path / "results.txt"
    a_file.write_text("not a directory")
    assert main(["run", str(_minilm()), "--out", str(a_file)]) == 2
    assert f"--out '{a_file}' is a file, not a directory" in capsys.readouterr().err
    assert main(["run", str(_minilm()), "--out", str(a_file / "runs")]) == 2
    assert "cannot be created: part of its path is a file" in capsys.readouterr().err
    if os.geteuid() == 0:  # root writes through permission bits: /proc/self is a directory nobody can write in
        unwritable = Path("/proc/self")
    else:
        unwritable = tmp_path / "read-only"
        unwritable.mkdir(mode=0o500)
    assert main(["run", str(_minilm()), "--out", str(unwritable)]) == 2
    assert f"--out '{unwritable}' is not a writable directory" in capsys.readouterr().err


def test_execute_refuses_limits_it_cannot_enforce(tmp_path):
    from executors import execute
    from planner.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="in-process run .* cannot enforce them"):
        execute(_minilm(), None, isolate=False, timeout_s=5, out_dir=tmp_path)
    with pytest.raises(InvalidRequestError, match="timeout_s must be a positive finite number"):
        execute(_minilm(), None, timeout_s=float("nan"), out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


# -- a killed parent takes its worker with it ------------------------------------------------------------------
PARENT = """
import sys
from executors.isolation import run_isolated
run_isolated("tests.exec_helpers:sleep", {"seconds": 300}, sys.argv[1])
"""


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")  # dead; a zombie waits for whoever adopted it to reap it


def _wait(condition, limit_s: float = 120.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + limit_s  # a bound for a loaded machine, not a speed assertion
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_parent_takes_its_worker_with_it(tmp_path, signum):
    job = tmp_path / "job"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(job)], env=_env(), cwd=REPO)
    try:
        assert _wait(lambda: (job / "progress.json").is_file() and (job / "worker.json").is_file())
        worker = json.loads((job / "worker.json").read_text())["pid"]
        assert worker != parent.pid and not _gone(worker)
        os.kill(parent.pid, signum)
        parent.wait(60)
        assert _wait(lambda: _gone(worker)), f"worker {worker} outlived its parent killed by {signum!r}"
    finally:
        parent.kill()
        parent.wait()


def test_an_interrupted_execute_records_a_failed_run(tmp_path, monkeypatch):
    import executors.isolation as isolation
    from executors import execute

    def interrupted(*args, **kwargs):
        raise isolation.Interrupted(signal.SIGTERM)

    monkeypatch.setattr(isolation, "run_isolated", interrupted)
    with pytest.raises(isolation.Interrupted):
        execute(_minilm(), None, out_dir=tmp_path, device="cpu", speed=False)
    (line,) = (tmp_path / "results.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["status"] == "failed" and record["reason"].startswith("interrupted: this process received SIGTERM")
    assert json.loads(Path(record["result_path"]).read_text())["run_id"] == record["run_id"]


# -- re-runs and concurrent runs never cross -----------------------------------------------------------------

@pytest.mark.exec
def test_rerunning_a_strategy_keeps_both_results_and_a_corrupt_reference_is_recomputed(tmp_path, monkeypatch):
    from executors import execute
    from executors.evaluate import get_evaluator
    from executors.evaluate.reference import clear_memory_cache, reference_path

    monkeypatch.setenv("FITPLAN_CACHE", str(tmp_path / "cache"))  # this test corrupts its cache
    clear_memory_cache()
    first = execute(_minilm(), None, evaluator="fidelity", isolate=False, out_dir=tmp_path / "out", device="cpu",
                    speed=False)
    path = reference_path(_minilm(), get_evaluator("fidelity", "encoder"))
    assert first.ok and not first.quality.baseline_cached and path.is_file()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated, as by a full disk
    clear_memory_cache()
    second = execute(_minilm(), None, evaluator="fidelity", isolate=False, out_dir=tmp_path / "out", device="cpu",
                     speed=False)
    assert second.ok and not second.quality.baseline_cached  # detected and recomputed, not a failure
    assert second.quality.compressed == pytest.approx(first.quality.compressed)
    assert first.run_id != second.run_id and first.run_dir != second.run_dir
    assert Path(first.run_dir).parent == Path(second.run_dir).parent  # same candidate, two runs
    assert json.loads(Path(first.result_path).read_text())["run_id"] == first.run_id
    lines = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert [line["run_id"] for line in lines] == [first.run_id, second.run_id]
    clear_memory_cache()


@pytest.mark.exec
def test_corrupt_reference_file_is_detected_without_torch(tmp_path, monkeypatch):
    from executors.evaluate import get_evaluator
    from executors.evaluate.base import Reference
    from executors.evaluate.reference import cached_reference, clear_memory_cache, has_reference, reference_path, \
        store_reference

    monkeypatch.setenv("FITPLAN_CACHE", str(tmp_path))
    evaluator = get_evaluator("fidelity", "encoder")
    path = reference_path(_minilm(), evaluator)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00garbage")
    assert not has_reference(_minilm(), evaluator) and not path.exists()
    store_reference(_minilm(), evaluator, Reference(value=1.0, tensors={}, facts={"params": 3}))
    clear_memory_cache()
    assert has_reference(_minilm(), evaluator)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # one flipped byte inside the archive: CRC mismatch
    path.write_bytes(bytes(data))
    assert not has_reference(_minilm(), evaluator) and not path.exists()
    path.write_bytes(b"PK\x03\x04 not really a zip")
    assert cached_reference(_minilm(), evaluator) is None and not path.exists()
    clear_memory_cache()


@pytest.mark.exec
def test_two_concurrent_cli_runs_into_one_out_never_cross(tmp_path):
    """The same strategy at once into the same --out, one on the CPU and one asking for a GPU this
    machine does not have: each reports its own outcome, in its own directory and log line."""
    out = tmp_path / "runs"
    command = [sys.executable, "-m", "planner.cli", "run", str(_minilm()), "--quant", "int8", "--eval", "fidelity",
               "--no-speed", "--json", "--out", str(out)]
    cpu = subprocess.Popen(command + ["--device", "cpu", "--progress"], env=_env(), cwd=REPO, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    gpu = subprocess.Popen(command + ["--device", "cuda"], env=_env(), cwd=REPO, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    (cpu_out, cpu_err), (gpu_out, _) = cpu.communicate(600), gpu.communicate(600)
    ok, failed = json.loads(cpu_out), json.loads(gpu_out)
    assert cpu.returncode == 0 and ok["status"] == "ok", ok.get("reason")
    assert gpu.returncode == 1 and failed["status"] == "failed" and "no CUDA GPU" in failed["reason"]
    assert ok["run_id"] != failed["run_id"] and Path(ok["run_dir"]).parent == Path(failed["run_dir"]).parent
    assert Path(ok["job_dir"]).parent == Path(ok["run_dir"])
    for record in (ok, failed):
        assert json.loads(Path(record["result_path"]).read_text())["status"] == record["status"]
    logged = {json.loads(line)["run_id"]: json.loads(line)["status"]
              for line in (out / "results.jsonl").read_text().splitlines()}
    assert logged == {ok["run_id"]: "ok", failed["run_id"]: "failed"}
    # progress: one line per phase on stderr, stdout stays pure JSON
    assert f"fitplan run {ok['run_id']}:" in cpu_err and "loading the model" in cpu_err
    assert "evaluating quality" in cpu_err
