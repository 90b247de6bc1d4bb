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


def test_fits_table_loads_only_what_it_needs():
    """`fitplan fits --gpu 16GB` (the default table) prints from numpy columns: no pandas, no urllib,
    no numpy.ma (each costs tens of milliseconds of start-up)."""
    code = ("import sys; from planner.cli import main; status = main(['fits', '--gpu', '16GB']); "
            "loaded = [m for m in ('pandas', 'urllib.request', 'numpy.ma') if m in sys.modules]; "
            "sys.stderr.write(f'STATUS={status} LOADED=' + ','.join(loaded))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stderr.strip().splitlines()[-1] == "STATUS=0 LOADED="
    assert "models fit on Generic 16 GiB GPU" in result.stdout
