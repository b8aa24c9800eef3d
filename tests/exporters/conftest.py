"""Fixtures of the exporter tests (helpers in tests/helpers/synthetic_trials.py)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "helpers"))

import synthetic_trials  # noqa: E402


@pytest.fixture(scope="module")
def static_tiny_trial(tmp_path_factory):
    """The tiny stage-1 config as a trial folder with random weights (static field)."""
    return synthetic_trials.build_tiny_trial(tmp_path_factory.mktemp("static"))


@pytest.fixture(scope="module")
def dynamic_tiny_trial(tmp_path_factory):
    """The tiny config with the 4-D grid switched on (dynamic field), as a trial folder."""
    return synthetic_trials.build_tiny_trial(tmp_path_factory.mktemp("dynamic"), dynamic=True)
