"""Issue 14, "Clear errors instead of tracebacks": every case ends with exit code 2 and one ``fourdfy: error:`` line
naming the key or file, no traceback, and nothing written under ``exp_root_dir``.

The cases run in-process (``launch.main``: a subprocess costs ~6 s of imports each); ``test_real_command_line``
runs a few through ``python launch.py`` / ``python -m fourdfy`` to show the same on a real stderr, and that
``--verbose`` adds the traceback.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import launch
from fourdfy.experiment import load_config
from fourdfy.registry import build

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "smoke"
TINY1 = str(SMOKE / "fourdfy_stage_1_tiny.yaml")
PROMPT = "system.prompt_processor.prompt=a panda dancing"


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> Path:
    """Checkpoints that are not this run's: empty, truncated, random bytes, a folder, another stage's; and a file
    where a folder is expected."""
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.ckpt").write_bytes(b"")
    (d / "random.ckpt").write_bytes(bytes((i * 37 + 11) % 256 for i in range(5000)))
    (d / "folder.ckpt").mkdir()
    (d / "a_file").write_text("not a folder\n")
    # a checkpoint of the low-VRAM stage 1 (patch renderer: renderer.base_renderer.*), as its training would save it
    cfg, _ = load_config([str(SMOKE / "fourdfy_stage_1_low_vram_tiny.yaml")], [PROMPT])
    system = build("system", cfg.system_type, cfg.system, "system")
    frozen = system.frozen_state_keys()
    state = {k: v for k, v in system.state_dict().items() if k not in frozen}
    torch.save({"state_dict": state, "global_step": 1, "epoch": 0}, d / "low_vram.ckpt")
    whole = (d / "low_vram.ckpt").read_bytes()
    (d / "truncated.ckpt").write_bytes(whole[: len(whole) // 3])
    return d


def unwritable_root() -> Path:
    """An existing folder nobody may create folders in (``/sys`` refuses even root)."""
    p = Path("/sys/kernel")
    if not p.is_dir():
        pytest.skip("needs Linux /sys")
    return p


CASES = {
    # name: (extra arguments ({d} = the bad-files folder, {out} = exp_root_dir), text the error must contain)
    "resume-missing": (["resume={d}/nope.ckpt"], "resume: no checkpoint at"),
    "resume-empty": (["resume={d}/empty.ckpt"], "empty.ckpt' is empty (0 bytes)"),
    "resume-truncated": (["resume={d}/truncated.ckpt"], "truncated.ckpt': the file is truncated or not"),
    "resume-random-bytes": (["resume={d}/random.ckpt"], "random.ckpt': the file is truncated or not"),
    "resume-directory": (["resume={d}/folder.ckpt"], "folder.ckpt' is a folder, not a checkpoint file"),
    "resume-other-stage": (["resume={d}/low_vram.ckpt"], "modules that do not match: 'renderer'"),
    "batch_size=0": (["data.multi_view.batch_size=0"], "data.multi_view.batch_size: must be >= 1, got 0"),
    "width=0": (["data.multi_view.width=0"], "data.multi_view.width: must be >= 1, got 0"),
    "height=-32": (["data.multi_view.height=-32"], "data.multi_view.height: must be >= 1, got -32"),
    "num_samples_per_ray=0": (["system.renderer.num_samples_per_ray=0"], "system.renderer.num_samples_per_ray: must"),
    "max_steps=0": (["trainer.max_steps=0"], "trainer.max_steps: must be >= 1, got 0"),
    "max_steps=-5": (["trainer.max_steps=-5"], "trainer.max_steps: must be >= 1, got -5"),
    "max_steps=2.5": (["trainer.max_steps=2.5"], "trainer.max_steps: expected an int, got 2.5"),
    "lr=abc": (
        ["system.optimizer.params[geometry.encoding].lr=abc"],
        "system.optimizer.params[geometry.encoding].lr: expected a number, got 'abc'",
    ),
    "exp_root_dir-is-a-file": (["exp_root_dir={d}/a_file"], "exp_root_dir: {d}/a_file is a file, not a folder"),
    "exp_root_dir-under-read-only": (["exp_root_dir={ro}/fourdfy-out"], "exp_root_dir: cannot write {ro}/fourdfy-out"),
    "exp_root_dir-unwritable": (["exp_root_dir={ro}"], "exp_root_dir: cannot write in {ro}"),
    "FOURDFY_CACHE_DIR-is-a-file": (["@FOURDFY_CACHE_DIR={d}/a_file"], "FOURDFY_CACHE_DIR: {d}/a_file is a file"),
    "text-encoder-path-missing": (
        ["system.prompt_processor_multi_view.pretrained_model_name_or_path={d}/no-such-sd21"],
        "system.prompt_processor_multi_view.pretrained_model_name_or_path: the local folder '{d}/no-such-sd21' does "
        "not exist",
    ),
    "--gpu-abc": (["--gpu", "abc"], "--gpu 'abc': expected GPU indices"),
    "stage-3-missing-video-weights": (
        ["data.single_view.static=false", "data.single_view.simultan=true", "system.simultan=true",
         "data.single_view.prob_single_view_video=1.0", "system.prob_single_view_video=1.0", "data.prob_multi_view=0.5",
         "system.guidance_video.pretrained_model_name_or_path=cerspense/zeroscope_v2_576w"],
        "system.guidance_video.pretrained_model_name_or_path: cannot load ZeroScope weights",
    ),  # fmt: skip
    "build-error": (["system.renderer.radius=-1"], "system: cannot build it (ValueError): roi_aabb"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_line_error_and_nothing_written(case, bad_files, tmp_path, capfd, monkeypatch):
    extra, fragment = CASES[case]
    out = tmp_path / "out"
    fill = {"d": bad_files, "out": out}
    if "{ro}" in " ".join(extra):
        fill["ro"] = unwritable_root()
    args = [a.format(**fill) for a in extra]
    for a in [a for a in args if a.startswith("@")]:
        name, value = a[1:].split("=", 1)
        monkeypatch.setenv(name, value)
        args.remove(a)
    if not any(a.startswith("exp_root_dir=") for a in args):
        args.append(f"exp_root_dir={out}")
    try:
        rc = launch.main(["--config", TINY1, "--train", PROMPT, "trainer.max_steps=1", *args])
    except SystemExit as e:  # command-line syntax (argparse) errors exit at once
        rc = e.code
    err = capfd.readouterr().err
    assert rc == 2, err[-3000:]
    error_lines = [line for line in err.splitlines() if line.startswith("fourdfy: error:")]
    assert len(error_lines) == 1, err[-3000:]
    assert fragment.format(**fill) in err, err[-3000:]
    assert "Traceback" not in err
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))


def test_gpu_without_cuda_says_it_runs_on_the_cpu(tmp_path, caplog, capfd):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rc = launch.main(["--config", TINY1, "--train", "--gpu", "0", PROMPT, f"resume={tmp_path}/nope.ckpt"])
    assert rc == 2
    assert "--gpu 0: no CUDA device is available, so this run uses the CPU" in caplog.text


def test_three_typos_give_three_errors(capfd, tmp_path):
    rc = launch.main([
        "--config", TINY1, "--train", PROMPT, f"exp_root_dir={tmp_path}",
        "system.geometry.radiuss=1", "data.multi_view.widht=32", "system.renderer.num_samples_per_rayy=8",
    ])  # fmt: skip
    err = capfd.readouterr().err
    assert rc == 2
    assert err.startswith("fourdfy: error: 3 errors in the config:")
    assert "system.geometry.radiuss: unknown key" in err and "Did you mean 'radius'" in err
    assert "data.multi_view.widht: unknown key" in err and "Did you mean 'width'" in err
    assert "system.renderer.num_samples_per_rayy: unknown key" in err and "Did you mean 'num_samples_per_ray'" in err
    assert len([line for line in err.splitlines() if line.startswith("fourdfy: error:")]) == 1


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    )  # the installed packages stay importable (a --target install on the GPU machine)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


def test_real_command_line(bad_files, tmp_path):
    """Through a real process: launch.py and python -m fourdfy print one line; --verbose adds the traceback."""
    base = ["--config", TINY1, "--train", PROMPT, f"exp_root_dir={tmp_path / 'out'}"]
    p = run_cli([str(ROOT / "launch.py"), *base, f"resume={bad_files / 'truncated.ckpt'}"], tmp_path)
    assert p.returncode == 2 and p.stderr.count("fourdfy: error:") == 1 and "Traceback" not in p.stderr, p.stderr
    assert "truncated.ckpt" in p.stderr
    p = run_cli(["-m", "fourdfy", *base, "system.renderer.radius=-1", "--verbose"], tmp_path)
    assert p.returncode == 2 and "Traceback" in p.stderr and "fourdfy: error: system: cannot build it" in p.stderr
    assert not (tmp_path / "out").exists()
