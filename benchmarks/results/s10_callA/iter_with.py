"""benchmarks/iteration.py with settings of hash_grid_triton from HT_SET ("NAME=int,NAME=int"), for A/B runs."""
import os
import runpy
import sys

sys.path.insert(0, os.getcwd())
from fourdfy.field_components import hash_grid_triton as ht  # noqa: E402

for kv in filter(None, os.environ.get("HT_SET", "").split(",")):
    name, value = kv.split("=")
    assert hasattr(ht, name), name
    setattr(ht, name, int(value))
    print(f"hash_grid_triton.{name} = {value}", flush=True)
sys.argv = ["benchmarks/iteration.py"] + sys.argv[1:]
runpy.run_path("benchmarks/iteration.py", run_name="__main__")
