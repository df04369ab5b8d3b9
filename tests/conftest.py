"""Shared fixtures: tiny random checkpoints and their exports, built once per test session."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_MODELS = REPO.parent / "shared" / "models"


def shared_model(name: str) -> Path:
    """A folder of real LiquidAI metadata from ../shared/models, or skip with the reason."""
    folder = SHARED_MODELS / name
    if not folder.is_dir():
        pytest.skip(f"{folder} not present (real LFM2 metadata lives in ../shared/models)")
    return folder


VL_REFERENCE_ENV = "LFM2_VL_REFERENCE_PYTHON"
VL_REFERENCE_SKIP = ("the LFM2-VL transformers reference venv is absent (bash tests/vl_reference/install.sh, or set "
                     f"{VL_REFERENCE_ENV}), so the image-processor-vs-transformers tests did not run")


def vl_reference_python() -> Path:
    """The reference venv's python (transformers + torchvision, kept out of the main venv), or skip."""
    import os

    python = Path(os.environ.get(VL_REFERENCE_ENV) or REPO / ".venv-vlref" / "bin" / "python")
    if not python.is_file():
        pytest.skip(VL_REFERENCE_SKIP)
    return python


class Factory:
    """Checkpoints and exports keyed by their options, so tests share the expensive parts."""

    def __init__(self, root: Path):
        self.root = root
        self._checkpoints: dict[tuple, Path] = {}
        self._exports: dict[tuple, Path] = {}

    def checkpoint(self, **overrides) -> Path:
        from lfm2_onnx.builder.tiny import write_tiny_checkpoint

        key = tuple(sorted((k, repr(v)) for k, v in overrides.items()))
        if key not in self._checkpoints:
            dest = self.root / f"ckpt{len(self._checkpoints)}"
            self._checkpoints[key] = write_tiny_checkpoint(dest, **overrides)
        return self._checkpoints[key]

    def export(self, checkpoint: Path, precision: str = "fp32", ep: str = "cpu") -> Path:
        from lfm2_onnx.builder.export import export
        from lfm2_onnx.builder.options import BuildOptions

        key = (checkpoint, precision, ep)
        if key not in self._exports:
            out = self.root / f"export{len(self._exports)}_{precision}_{ep}"
            self._exports[key] = export(checkpoint, out, BuildOptions(precision, ep), progress=False).folder
        return self._exports[key]


@pytest.fixture(scope="session")
def factory(tmp_path_factory) -> Factory:
    return Factory(tmp_path_factory.mktemp("lfm2"))


@pytest.fixture(scope="session")
def tiny_checkpoint(factory) -> Path:
    return factory.checkpoint()


@pytest.fixture(scope="session")
def tiny_export(factory, tiny_checkpoint) -> Path:
    """fp32 CPU export of the default tiny checkpoint."""
    return factory.export(tiny_checkpoint)


def _skip_reason(report) -> str:
    """A skip's reason, with every path under ../shared/models folded into one reason."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    reason = reason.removeprefix("Skipped: ")
    if str(SHARED_MODELS) in reason or "../shared/models" in reason:
        return f"{SHARED_MODELS} (real LFM2 metadata) is absent, so the real-shape tests did not run"
    return reason


def pytest_terminal_summary(terminalreporter):
    """One line naming what was skipped and why, so a green run never hides tests that did not run."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if r.skipped]
    if not skipped:
        return
    reasons = Counter(_skip_reason(r) for r in skipped)
    parts = "; ".join(f"{count} because {reason}" for reason, count in reasons.most_common())
    terminalreporter.write_line(f"skipped {len(skipped)}: {parts}", yellow=True)
