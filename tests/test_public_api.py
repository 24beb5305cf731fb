"""The public API re-exported from ``lmaas_tune`` resolves, stays cheap to import, and type-checks."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import lmaas_tune

ROOT = Path(__file__).resolve().parents[1]

#: what a library user needs in a few lines (issue 8); all must stay exported
REQUIRED = {
    "BlackBoxTuner", "FitResult", "GenerationReport", "EvaluationProgress", "TuneConfig", "PRESETS",
    "LocalBackend", "RemoteBackend", "Backend", "BackendInfo", "ScoringBatch", "Query", "ModelKind",
    "Task", "TaskSpec", "get_task", "TASKS", "custom_task", "FewShotSplit", "Projection", "ProjectionSpec",
    "evaluate_prompt", "LmaasTuneError", "__version__",
}


def test_every_public_name_resolves() -> None:
    names = lmaas_tune.__all__
    assert len(names) == len(set(names)), "duplicate names in __all__"
    assert REQUIRED <= set(names), f"missing from __all__: {sorted(REQUIRED - set(names))}"
    for name in names:
        assert getattr(lmaas_tune, name) is not None, name
    assert set(names) <= set(dir(lmaas_tune))

    # every exported error class is part of the one exception tree, with all its subclasses exported
    from lmaas_tune import errors

    tree = {n for n, v in vars(errors).items() if isinstance(v, type) and issubclass(v, errors.LmaasTuneError)}
    assert tree <= set(names), f"error classes not exported: {sorted(tree - set(names))}"
    assert lmaas_tune.LmaasTuneError is errors.LmaasTuneError

    # lazily loaded names are the very objects their defining modules hold
    assert lmaas_tune.BlackBoxTuner is importlib.import_module("lmaas_tune.tuning.tuner").BlackBoxTuner
    assert lmaas_tune.RemoteBackend is importlib.import_module("lmaas_tune.backends.remote.client").RemoteBackend
    with pytest.raises(AttributeError, match="no_such_name"):
        lmaas_tune.no_such_name  # noqa: B018


def test_import_is_light() -> None:
    code = (
        "import sys, lmaas_tune; "
        "heavy = sorted(m for m in ('torch', 'transformers', 'aiohttp', 'numpy') if m in sys.modules); "
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", f"`import lmaas_tune` pulled in {out.stdout.strip()}"


def test_package_type_checks() -> None:
    api = pytest.importorskip("mypy.api", reason="mypy is not installed (pip install 'lmaas-tune[test]')")
    assert (ROOT / "lmaas_tune" / "py.typed").is_file()
    stdout, stderr, status = api.run([
        "--config-file", str(ROOT / "pyproject.toml"),
        "--cache-dir", str(ROOT / ".mypy_cache"),
        str(ROOT / "lmaas_tune"),
    ])
    assert status == 0, f"mypy failed:\n{stdout}{stderr}"
    assert stdout.strip().startswith("Success"), stdout
