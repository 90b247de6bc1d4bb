"""get_model: registry names and aliases, directories, config paths, dicts, hub ids offline."""

from __future__ import annotations

import json
import time

import pytest

from planner import get_model
from planner.errors import InvalidConfigError, OfflineError, UnknownModelError
from planner.models import registry_entries


@pytest.mark.parametrize("name", ["meta-llama/Llama-3.1-8B", "Llama-3.1-8B", "llama-3.1-8b",
                                  "meta-llama/Meta-Llama-3.1-8B", "Llama-3.1-8B-Instruct", "LLAMA 3.1 8B"])
def test_registry_names_aliases_and_spellings(name):
    assert get_model(name).name == "meta-llama/Llama-3.1-8B"


def test_names_that_differ_only_by_a_dot_stay_distinct():
    assert get_model("facebook/opt-1.3b").params.total != get_model("facebook/opt-13b").params.total


def test_every_alias_resolves_to_its_entry():
    for entry in registry_entries():
        for alias in entry.aliases:
            assert get_model(alias).name == entry.name


@pytest.fixture()
def config_dir(tmp_path):
    config = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "intermediate_size": 128, "vocab_size": 100}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_directory_and_config_path(config_dir):
    from_dir = get_model(config_dir)
    from_file = get_model(str(config_dir / "config.json"))
    assert from_dir.params.total == from_file.params.total > 0
    assert from_dir.source.endswith("config.json") and from_dir.name == config_dir.name


def test_plain_dict():
    spec = get_model({"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 128,
                      "vocab_size": 100}, name="tiny-gpt2")
    assert spec.name == "tiny-gpt2" and spec.source == "dict"


def test_directory_without_config(tmp_path):
    with pytest.raises(UnknownModelError, match="has no config.json"):
        get_model(tmp_path)


def test_malformed_config_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(InvalidConfigError, match="not a readable JSON config"):
        get_model(path)


def test_missing_path():
    with pytest.raises(UnknownModelError, match="no such file"):
        get_model("./does-not-exist/config.json")


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UnknownModelError, match="Did you mean .*Llama-3.1-8B"):
        get_model("lama-3.1-8B")


def test_hub_id_fails_fast_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(OfflineError, match="local path"):
        get_model("some-org/some-model")
    assert time.perf_counter() - start < 1.0


def test_hub_id_found_in_the_local_hub_cache(monkeypatch, tmp_path, config_dir):
    snapshot = tmp_path / "hub" / "models--some-org--tiny" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text((config_dir / "config.json").read_text())
    (tmp_path / "hub" / "models--some-org--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--some-org--tiny" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = get_model("some-org/tiny")
    assert spec.name == "some-org/tiny" and spec.source == "hub-cache:some-org/tiny"


def test_wrong_type():
    with pytest.raises(UnknownModelError, match="got int"):
        get_model(42)
