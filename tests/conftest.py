"""Test-suite settings: offline hub, small thread count, runtime shape checking.

The jaxtyping import hook is installed *before* anything from ``fourdfy`` or ``extern`` is imported, so every
annotated function in those packages is checked by beartype while the tests run (see ``test_typecheck_canary``).
"""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# text-embedding caches of the tests go to a private folder, never into the working directory
os.environ.setdefault("FOURDFY_CACHE_DIR", tempfile.mkdtemp(prefix="fourdfy-test-cache-"))

import jaxtyping  # noqa: E402

jaxtyping.install_import_hook(["fourdfy", "extern"], "beartype.beartype")

import torch  # noqa: E402

# under pytest-xdist every worker gets one thread (2 workers on 2 cores); subprocesses inherit the limit
_threads = int(os.environ.get("FOURDFY_TEST_THREADS", "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2"))
torch.set_num_threads(_threads)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# test helpers importable by name (``import synthetic_trials``) from every test folder
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))


@pytest.fixture(scope="module")
def static_tiny_trial(tmp_path_factory):
    """The tiny stage-1 config as a trial folder with random weights (static field)."""
    import synthetic_trials

    return synthetic_trials.build_tiny_trial(tmp_path_factory.mktemp("static"))


@pytest.fixture(scope="module")
def dynamic_tiny_trial(tmp_path_factory):
    """The tiny config with the 4-D grid switched on (dynamic field), as a trial folder."""
    import synthetic_trials

    return synthetic_trials.build_tiny_trial(tmp_path_factory.mktemp("dynamic"), dynamic=True)
