"""The suite's own reporting: a green run names the tests it skipped and why, in one line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).resolve().parent / "conftest.py"


def test_skip_summary_names_reasons_and_counts(tmp_path):
    # A repo of its own, with no shared/models beside it (conftest looks in REPO/../shared/models).
    tests = tmp_path / "repo" / "tests"
    tests.mkdir(parents=True)
    shutil.copy(CONFTEST, tests / "conftest.py")
    (tests / "test_some.py").write_text(
        "import pytest\n"
        "from conftest import shared_model\n"
        "@pytest.mark.parametrize('name', ['LFM2-350M', 'LFM2-1.2B', 'LFM2-2.6B'])\n"
        "def test_real(name):\n"
        "    shared_model(name)\n"
        "def test_node():\n"
        "    pytest.skip('node is not on PATH')\n"
        "def test_runs():\n"
        "    pass\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
                            cwd=tests, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("skipped ")]
    shared = tmp_path / "shared" / "models"
    assert lines == [f"skipped 4: 3 because {shared} (real LFM2 metadata) is absent, so the real-shape tests "
                     "did not run; 1 because node is not on PATH"], result.stdout


def test_no_summary_when_nothing_skipped(tmp_path):
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_ok.py").write_text("def test_ok():\n    pass\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "1 passed" in result.stdout
    assert not [line for line in result.stdout.splitlines() if line.startswith("skipped ")], result.stdout
