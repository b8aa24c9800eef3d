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
