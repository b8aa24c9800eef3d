"""``benchmarks/gc_objects.py`` stays alive on the tiny stage 3: it counts the objects the garbage collector tracks
before and with the system, and none are left in its reach after ``gc.freeze()``. No timing is asserted."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gc_objects_smoke(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gc_objects.py"), "--tiny", "--repeats", "1",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = tmp_path.glob("gc_objects_fourdfy_stage_3_tiny_*.json")
    rows = json.loads(path.read_text())["rows"]
    before, with_system = rows["before the system"], rows["with the system"]
    assert with_system["tracked_objects"] > before["tracked_objects"] > 0
    assert rows["after gc.freeze()"]["tracked_objects"] == 0
    assert json.loads(path.read_text())["frozen"] >= 0.9 * with_system["tracked_objects"]  # the system was frozen
