"""Upper packages register their commands through the ``fitplan.commands`` entry points; the planner's
CLI never names them, and sizing commands do not load them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from planner import cli


def test_executor_commands_come_from_the_entry_point():
    names = [name for name, _ in cli.plugin_registrars()]
    assert "executors" in names and "search" in names
    parser = cli.build_parser(["run", "--help"])
    choices = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse keeps them here
    assert {"run", "fixtures"} <= set(choices)


def test_builtin_commands_do_not_load_plugins():
    parser = cli.build_parser(["--hardware-file", "x.toml", "fits", "--gpu", "16GB"])
    choices = parser._subparsers._group_actions[0].choices  # noqa: SLF001
    assert "run" not in choices and "fits" in choices
    code = ("import sys; from planner.cli import main; main(['fits', '--gpu', '16GB', '--model', 'gpt2', '--json']); "
            "print('loaded:' + ','.join(m for m in ('executors', 'search') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "loaded:"


def test_planner_source_never_names_the_upper_packages():
    from pathlib import Path

    import planner

    root = Path(planner.__file__).parent
    offenders = [str(path.relative_to(root)) for path in root.rglob("*.py")
                 if any(line.lstrip().startswith(("import executors", "from executors", "import search",
                                                  "from search"))
                        for line in path.read_text().splitlines())]
    assert offenders == []


def test_a_broken_plugin_is_one_warning_not_a_crash(monkeypatch, capsys):
    class Broken:
        name, value = "broken", "no_such_module_xyz:register"

        def load(self):
            raise ModuleNotFoundError("No module named 'no_such_module_xyz'")

    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [Broken()])
    assert cli.plugin_registrars() == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'broken' commands are unavailable" in err


@pytest.mark.parametrize("argv, expected", [(["fits"], False), (["--hardware-file", "a", "size"], False),
                                            (["run"], True), (["--help"], True), ([], True)])
def test_plugins_are_needed_only_for_other_commands(argv, expected):
    assert cli._needs_plugins(argv) is expected  # noqa: SLF001


def test_every_command_and_subcommand_prints_its_help():
    """``--help`` of every command (plugins included) formats: a '%' in a help string breaks argparse."""
    import argparse

    def walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
        parser.format_help()
        names = [path]
        for action in parser._actions:  # noqa: SLF001 - argparse keeps subparsers here
            if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
                for name, sub in action.choices.items():
                    names += walk(sub, f"{path} {name}")
        return names

    seen = walk(cli.build_parser(["--help"]), "fitplan")
    assert {"fitplan plan", "fitplan search", "fitplan run", "fitplan hardware probe", "fitplan report"} <= set(seen)
