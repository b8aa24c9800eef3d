"""A process killed while writing a checkpoint never leaves a corrupt ``last.ckpt``."""

import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from fourdfy.utils.checkpoint_io import AtomicCheckpointIO

ROOT = Path(__file__).resolve().parents[2]


def test_killed_writer_leaves_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "ckpts" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 10, "state_dict": {"w": torch.ones(3)}}, path)
    child = textwrap.dedent(f"""
        import os, sys, torch
        sys.path.insert(0, {str(ROOT)!r})
        from fourdfy.utils.checkpoint_io import AtomicCheckpointIO
        def dying_save(obj, f):
            f.write(b"PK" + b"x" * 100000)  # half a file ...
            f.flush()
            os._exit(9)                     # ... then the process is killed
        torch.save = dying_save
        AtomicCheckpointIO().save_checkpoint({{"global_step": 20}}, {str(path)!r})
    """)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 10
    torch.testing.assert_close(ckpt["state_dict"]["w"], torch.ones(3))


def test_successful_save_replaces_file(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 1}, path)
    io.save_checkpoint({"global_step": 2}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp files left behind
