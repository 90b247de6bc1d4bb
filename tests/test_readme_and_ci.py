"""README opens with exactly the two commands (main job, test suite) and CI runs the second one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bash_blocks() -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```$", (ROOT / "README.md").read_text(), flags=re.S | re.M)


def test_readme_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    before_first_block = text.split("```bash", 1)[0]
    assert "```" not in before_first_block
    install_and_run, install_and_test = [block.strip() for block in _bash_blocks()[:2]]
    assert "pip install ." in install_and_run and "fitplan " in install_and_run
    assert "torch==2.13.0" in install_and_test
    assert install_and_test.index("torch==2.13.0") < install_and_test.index('".[test]"')
    assert "pytest" in install_and_test and "HF_HUB_OFFLINE=1" in install_and_test


def test_ci_runs_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in script and "n == 2" in script
    assert (ROOT / ".ci" / "run").stat().st_mode & 0o111
