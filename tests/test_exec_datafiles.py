"""The user's evaluation and calibration data: formats, field detection, clear errors, content keys."""

from __future__ import annotations

import json
import os
import sys
import types

import pytest

from executors.datafiles import data_fingerprint, read_texts
from planner.errors import InvalidRequestError

SENTENCES = {
    "cooking": ["Simmer the tomato sauce for twenty minutes.", "Knead the dough until it is smooth.",
                "Season the soup with salt and pepper.", "Roast the vegetables in a hot oven."],
    "finance": ["The central bank raised interest rates.", "Stock prices fell after the earnings report.",
                "Inflation slowed for the third month.", "The company issued new bonds to investors."],
}


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def labelled(tmp_path):
    rows = [(label, s) for label, items in SENTENCES.items() for s in items]
    csv = _write(tmp_path / "reviews.csv", "review,topic\n" + "".join(f'"{s}",{label}\n' for label, s in rows))
    jsonl = _write(tmp_path / "reviews.jsonl", "".join(json.dumps({"id": i, "text": s, "label": label}) + "\n"
                                                       for i, (label, s) in enumerate(rows)))
    return csv, jsonl, rows


def test_text_file_by_line_and_by_paragraph(tmp_path):
    path = _write(tmp_path / "notes.txt", "first line\nsecond line\n\n\nthird, after a blank line\n  \n")
    assert read_texts(path).texts == ("first line", "second line", "third, after a blank line")
    assert read_texts(path, unit="paragraph").texts == ("first line\nsecond line", "third, after a blank line")
    assert read_texts(path).format == "text" and read_texts(path).labels is None


def test_jsonl_csv_tsv_and_json_with_field_detection(tmp_path, labelled):
    csv, jsonl, rows = labelled
    loaded = read_texts(jsonl, labels=True)
    assert loaded.texts == tuple(s for _, s in rows) and loaded.labels == tuple(label for label, _ in rows)
    assert (loaded.text_field, loaded.label_field, loaded.format) == ("text", "label", "jsonl")
    # 'topic' is no usual label name: named explicitly, the other string column is the text
    from_csv = read_texts(csv, labels=True, label_field="topic")
    assert from_csv.texts == loaded.texts and from_csv.labels == loaded.labels and from_csv.text_field == "review"
    tsv = _write(tmp_path / "a.tsv", "sentence\tlabel\nhello there\t1\ngood bye\t0\n")
    assert read_texts(tsv, labels=True).labels == ("1", "0")
    plain = _write(tmp_path / "a.json", json.dumps(["one", "two", ""]))
    assert read_texts(plain).texts == ("one", "two")
    integers = _write(tmp_path / "b.jsonl", '{"text": "a", "label": 0}\n{"text": "b", "label": 1}\n')
    assert read_texts(integers, labels=True).labels == (0, 1)


@pytest.mark.parametrize(("name", "content", "kwargs", "message"), [
    ("empty.txt", "\n \n\n", {}, "holds no text"),
    ("empty.csv", "", {}, "holds no text"),
    ("blank.jsonl", '{"text": ""}\n{"text": "  "}\n', {}, "holds no text"),
    ("bad.jsonl", '{"text": "ok"}\n{"text": oops}\n', {}, "line 2 is not valid JSON"),
    ("list.jsonl", '[1, 2]\n', {}, "example 1 is a list"),
    ("object.json", '{"text": "a"}', {}, "must hold a list"),
    ("plain.txt", "a\nb\n", {"labels": True}, "plain text, which has no labels"),
    ("two.csv", "review,topic\nnice,a\n", {"labels": True}, "cannot tell which field holds the label"),
    ("typo.csv", "review,topic\nnice,a\n", {"labels": True, "label_field": "topik"}, "Did you mean 'topic'"),
    ("nolabel.jsonl", '{"text": "a", "label": "x"}\n{"text": "b"}\n', {"labels": True}, "record 2 has text but no"),
])
def test_bad_data_is_one_clear_error(tmp_path, name, content, kwargs, message):
    path = _write(tmp_path / name, content)
    with pytest.raises(InvalidRequestError, match=message):
        read_texts(path, **kwargs)


def test_missing_unreadable_and_non_utf8(tmp_path):
    with pytest.raises(InvalidRequestError, match="does not exist"):
        read_texts(tmp_path / "nope.txt")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(InvalidRequestError, match="not UTF-8"):
        read_texts(latin)
    locked = _write(tmp_path / "locked.txt", "secret\n")
    locked.chmod(0)
    try:
        if os.access(locked, os.R_OK):  # root reads anything: nothing to check here
            return
        with pytest.raises(InvalidRequestError, match="cannot be read"):
            read_texts(locked)
    finally:
        locked.chmod(0o644)


def test_edited_file_is_reread_and_changes_its_fingerprint(tmp_path):
    path = _write(tmp_path / "s.txt", "alpha\nbeta\n")
    before = data_fingerprint(path)
    assert read_texts(path).texts == ("alpha", "beta")
    _write(path, "alpha\nbeta\ngamma\n")
    assert read_texts(path).texts == ("alpha", "beta", "gamma")
    assert data_fingerprint(path) != before
    copy = _write(tmp_path / "copy.txt", "alpha\nbeta\ngamma\n")
    assert data_fingerprint(copy) == data_fingerprint(path)  # content, not path


def test_dataset_directory_needs_the_datasets_package(tmp_path, monkeypatch):
    (tmp_path / "saved").mkdir()
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(InvalidRequestError, match="needs the datasets package"):
        read_texts(tmp_path / "saved")


def test_dataset_directory_prefers_the_test_split(tmp_path, monkeypatch):
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "dataset_dict.json").write_text("{}")
    splits = {"train": [{"sentence": "train row", "label": 0}],
              "test": [{"sentence": "test row", "label": 1}, {"sentence": "another", "label": 0}]}
    fake = types.SimpleNamespace(load_from_disk=lambda path: dict(splits))
    monkeypatch.setitem(sys.modules, "datasets", fake)
    loaded = read_texts(saved, labels=True)
    assert loaded.texts == ("test row", "another") and loaded.labels == (1, 0) and loaded.format == "datasets"
    assert read_texts(saved, split="train", labels=True).texts == ("train row",)
    with pytest.raises(InvalidRequestError, match="no split 'dev'; it has train, test"):
        read_texts(saved, split="dev")


def test_evaluators_key_on_the_data_content(tmp_path, labelled):
    from executors.evaluate import (AccuracyEvaluator, FidelityEvaluator, PerplexityEvaluator, evaluator_from_spec,
                                    get_evaluator)

    _, jsonl, _ = labelled
    text = _write(tmp_path / "eval.txt", "one sentence\nanother sentence\n")
    fidelity = get_evaluator("fidelity", "encoder", data=text)
    perplexity = get_evaluator("perplexity", "causal-lm", data=text)
    accuracy = get_evaluator("accuracy", "encoder", data=jsonl)
    keys = {e: e.key() for e in (fidelity, perplexity, accuracy)}
    assert fidelity.texts == ("one sentence", "another sentence")
    assert keys[fidelity] != FidelityEvaluator().key() and keys[perplexity] != PerplexityEvaluator().key()
    assert keys[accuracy] != AccuracyEvaluator().key()
    for evaluator in keys:  # the isolated child rebuilds the same evaluator from its spec
        assert evaluator_from_spec(json.loads(json.dumps(evaluator.spec()))).key() == keys[evaluator]
    _write(text, "one sentence\nanother sentence, edited\n")
    assert fidelity.key() != keys[fidelity] and perplexity.key() != keys[perplexity]


def test_evaluator_data_checks(tmp_path, labelled):
    from executors.evaluate import check_evaluation_data, get_evaluator
    from tests.exec_helpers import count_bnb_modules

    one = _write(tmp_path / "one.txt", "only one\n")
    with pytest.raises(InvalidRequestError, match="at least 2 sentences"):
        check_evaluation_data(get_evaluator("fidelity", "encoder", data=one))
    single_class = _write(tmp_path / "single.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": 1}\n')
    with pytest.raises(InvalidRequestError, match="2 example.s. of 1 class"):
        check_evaluation_data(get_evaluator("accuracy", "encoder", data=single_class))
    with pytest.raises(InvalidRequestError, match="built-in evaluators"):
        get_evaluator(count_bnb_modules, "encoder", data=one)
    check_evaluation_data(get_evaluator("accuracy", "encoder", data=labelled[1]))  # enough: no error


def test_calibration_corpus_from_user_files(tmp_path):
    from executors.corpus import load_corpus

    records = _write(tmp_path / "calib.jsonl", "".join(json.dumps({"text": f"document number {i}"}) + "\n"
                                                       for i in range(20)))
    corpus = load_corpus(records)
    assert len(corpus.train) == 18 and corpus.validation == ("document number 9", "document number 19")
    lines = _write(tmp_path / "lines.txt", "".join(f"line {i}\n" for i in range(12)))  # one paragraph, 12 lines
    assert len(load_corpus(lines).train) + len(load_corpus(lines).validation) == 12
    with pytest.raises(InvalidRequestError, match="at least 10 are needed"):
        load_corpus(_write(tmp_path / "short.txt", "a\nb\n"))
    with pytest.raises(InvalidRequestError, match="does not exist"):
        load_corpus(tmp_path / "missing.txt")


@pytest.mark.exec
def test_cli_field_flags_build_the_evaluator(labelled):
    import argparse

    from executors.cli.run import _evaluator
    from executors.fixtures import minilm_dir

    def args(**values):
        base = {"eval_data": None, "text_field": None, "label_field": None, "evaluator": None,
                "model_dir": str(minilm_dir())}
        return argparse.Namespace(**{**base, **values})

    assert _evaluator(args(evaluator="fidelity")) == "fidelity"
    chosen = _evaluator(args(eval_data=str(labelled[0]), evaluator="accuracy", label_field="topic"))
    assert (chosen.name, chosen.label_field, chosen.text_field) == ("accuracy", "topic", None)
    with pytest.raises(InvalidRequestError, match="--text-field names a column of --eval-data"):
        _evaluator(args(text_field="review"))
    with pytest.raises(InvalidRequestError, match="--label-field is for --eval accuracy"):
        _evaluator(args(eval_data=str(labelled[0]), evaluator="fidelity", label_field="topic"))
