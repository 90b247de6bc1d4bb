"""The sizing side never imports torch or transformers: `pip install fitplan` without extras works."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "bitsandbytes", "accelerate")


@pytest.mark.parametrize("package", ["planner", "hardware_db", "planner.cli"])
def test_import_does_not_load_torch(package):
    code = (f"import sys, {package}; heavy = [m for m in {HEAVY!r} if m in sys.modules]; "
            "print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_models_cli_does_not_load_torch():
    code = ("import sys; from planner.cli import main; main(['models', 'show', 'gpt2', '--json']); "
            f"heavy = [m for m in {HEAVY!r} if m in sys.modules]; sys.stderr.write('HEAVY=' + ','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stderr.strip().splitlines()[-1] == "HEAVY="
