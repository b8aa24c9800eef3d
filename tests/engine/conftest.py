"""Engine tests: an environment restored after every test (the command line sets
``CUDA_VISIBLE_DEVICES`` and a run exports its timestamp and trial folder for data-parallel workers)."""

import os

import pytest


@pytest.fixture(autouse=True)
def restore_run_environment(monkeypatch):
    for name in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "PYTORCH_CUDA_ALLOC_CONF", "FOURDFY_TIMESTAMP", "FOURDFY_TRIAL_DIR"):
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.delenv(name, raising=False)
