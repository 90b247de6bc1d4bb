"""The exec extra's import gate, and that importing executors (or planner) loads no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from executors._imports import ExecExtraMissingError, INSTALL_HINT, _import, package_versions
from planner.errors import FitplanError


def test_missing_package_is_a_clear_user_error():
    with pytest.raises(ExecExtraMissingError, match="quantizing needs no_such_package_xyz") as caught:
        _import("no_such_package_xyz", "quantizing")
    assert isinstance(caught.value, FitplanError) and INSTALL_HINT in str(caught.value)


def test_versions_come_from_metadata():
    versions = package_versions()
    assert set(versions) >= {"torch", "transformers", "bitsandbytes"}


def test_importing_executors_and_its_light_modules_loads_no_torch():
    code = ("import sys, executors, executors.run, executors.result, executors.isolation, executors.evaluate, "
            "executors.predict, planner.memory.cpu, executors.cli.run; "
            "print(','.join(m for m in ('torch', 'transformers', 'bitsandbytes') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
