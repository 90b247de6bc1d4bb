"""Headless Chromium for the report tests: render a page, return its DOM after scripts ran, or a screenshot.

Where Chromium is missing the caller skips, unless ``FITPLAN_REQUIRE_CHROMIUM=1`` (set by ``.ci/run``):
then it is a failure, because CI must render the reports for real.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REQUIRE_ENV = "FITPLAN_REQUIRE_CHROMIUM"


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"Chromium is required here ({REQUIRE_ENV}=1) but is not installed")
        pytest.skip("no Chromium on this machine (CI installs the distribution's package)")
    return found


def _headless(browser: str, profile: Path) -> list[str]:
    return [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--virtual-time-budget=10000"]


def dump_dom(page: Path, profile: Path) -> tuple[str, str]:
    """The page's DOM after its scripts ran, and its ``<body ...>`` tag (where the report's guard writes
    ``data-js-errors`` and ``data-rendered``)."""
    done = subprocess.run([*_headless(chromium(), profile), "--dump-dom", page.as_uri()], capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, re.search(r"<body[^>]*>", done.stdout).group(0)


def screenshot(page: Path, profile: Path, shot: Path, height: int = 2400) -> Path:
    done = subprocess.run([*_headless(chromium(), profile), f"--screenshot={shot}", f"--window-size=1280,{height}",
                           page.as_uri()], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", done.stderr[-2000:]
    return shot
