"""The command line a person meets: ``python -m fourdfy``, what a run prints, the README's commands, the static
tables that keep config checking free of Lightning."""

import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import launch
from fourdfy import pipeline
from fourdfy.experiment import CHECKPOINT_ARGS, TRAINER_ARGS, load_config

ROOT = Path(__file__).resolve().parents[2]
TINY1 = str(ROOT / "configs" / "smoke" / "fourdfy_stage_1_tiny.yaml")
PROMPT = "system.prompt_processor.prompt=a panda dancing"


def test_python_m_fourdfy_smoke_run(tmp_path):
    """A real run: the progress bar shows, Lightning's tips and unactionable warnings do not, the last line names
    the trial folder, and log.txt holds the run's log."""
    env = dict(
        os.environ, HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p),
    )  # the installed packages stay importable (a --target install on the GPU machine)
    cmd = [sys.executable, "-m", "fourdfy", "--config", TINY1, "--train", PROMPT, f"exp_root_dir={tmp_path / 'out'}",
           "trainer.max_steps=2", "data.single_view.n_test_views=1"]  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    (trial,) = (tmp_path / "out" / "fourdfy_stage_1_tiny").iterdir()
    assert p.stderr.rstrip().splitlines()[-1] == f"[INFO] fourdfy: trial folder: {trial}"
    assert re.search(r"train: 100%.*2/2", p.stdout)  # the progress bar (steps, not epochs)
    for noise in ("Tip:", "LeafSpec", "module(s) in eval mode", "GPU available", "Traceback"):
        assert noise not in p.stderr + p.stdout, noise
    log = (trial / "log.txt").read_text()
    assert log.splitlines()[1] == shlex.join(["python", "-m", "fourdfy", *cmd[3:]])
    assert f"[INFO] fourdfy: trial folder: {trial}" in log


def test_smoke_config_shows_a_progress_bar():
    cfg, _ = load_config([TINY1], [PROMPT])
    assert cfg.trainer["enable_progress_bar"] is True


def test_static_trainer_tables_match_the_installed_lightning():
    """Config checking uses static tables (no Lightning import); they must list exactly Lightning's arguments."""
    from pytorch_lightning import Trainer
    from pytorch_lightning.callbacks import ModelCheckpoint

    assert set(TRAINER_ARGS) == set(inspect.signature(Trainer.__init__).parameters) - {"self"}
    assert set(CHECKPOINT_ARGS) == set(inspect.signature(ModelCheckpoint.__init__).parameters) - {"self"}


def test_checking_a_config_imports_no_lightning():
    """The whole check of 4D-fy's stage-1 config, with three typos in three modules: three errors, and neither
    Lightning nor diffusers nor transformers imported on the way (issue 8: a typo is reported in about the time it
    takes to import torch)."""
    code = (
        "import sys\nfrom fourdfy.cli import main\n"
        "rc = main(['--config', 'configs/fourdfy_stage_3.yaml', '--train', 'system.prompt_processor.prompt=x', "
        "'system.geometry.radiuss=1', 'system.renderer.num_samples_per_ra=3', 'system.guidance_video.guidance_scal=1'])\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning', 'diffusers', "
        "'transformers')]\nassert rc == 2, rc\nassert not heavy, heavy\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "3 errors in the config" in p.stderr
    for key in ("system.geometry.radiuss", "system.renderer.num_samples_per_ra", "system.guidance_video.guidance_scal"):
        assert key in p.stderr


def test_pipeline_stages_run_python_m_fourdfy():
    src = inspect.getsource(pipeline)
    assert '"-m", "fourdfy"' in src and "launch.py\"" not in src and "LAUNCH" not in src
    assert pipeline.stage_env()["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)


def test_pipeline_reports_every_stage_error_at_once(capfd, tmp_path):
    rc = launch.main(["--pipeline", str(ROOT / "configs" / "smoke" / "fourdfy_tiny.yaml"), "--train", PROMPT,
                      f"exp_root_dir={tmp_path}", "system.geometry.radiuss=1", "trainer.max_steps=0"])  # fmt: skip
    err = capfd.readouterr().err
    assert rc == 2 and err.startswith("fourdfy: error: 6 errors in the config:"), err
    for stage in ("stage 1 (fourdfy_stage_1_tiny.yaml)", "stage 2 (fourdfy_stage_2_tiny.yaml)",
                  "stage 3 (fourdfy_stage_3_tiny.yaml)"):
        assert f"{stage}: system.geometry.radiuss: unknown key" in err and f"{stage}: trainer.max_steps" in err


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 3)
    return text[start : end if end > 0 else None]


def test_readme_and_ci_run_the_same_test_command_reporting_skips():
    block = re.search(r"```bash\n(.*?)\n```", readme_section("Tests"), re.S).group(1)
    readme_cmd = block.replace("HF_HUB_OFFLINE=1 ", "").strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_cmd in ci.splitlines() and " -rs " in readme_cmd


def generate_commands() -> list[list[str]]:
    """The ``python launch.py`` commands of the README's "Generate" section, continuation lines joined and the
    shell variables filled in."""
    section = readme_section("Generate (the 4D-fy commands)")
    cmds = []
    for block in re.findall(r"```bash\n(.*?)\n```", section, re.S):
        for cmd in block.replace("\\\n", " ").splitlines():
            if cmd.startswith("python launch.py"):
                cmd = cmd.replace("$SD21_BASE", "/models/sd21-base").replace("$SD21", "/models/sd21")
                cmds.append(shlex.split(cmd.replace("<timestamp>", "20240101-000000"))[2:])
    return cmds


def test_readme_generate_commands_name_the_text_encoder():
    """The configs keep 4D-fy's removed stabilityai ids: the README's commands must replace every one a stage uses."""
    cmds = generate_commands()
    assert len(cmds) == 3
    for args in cmds:
        overrides = [a for a in args if "=" in a and not a.startswith("-")]
        if "--pipeline" in args:
            _, paths = pipeline.load_pipeline(str(ROOT / args[args.index("--pipeline") + 1]))
        else:
            paths = [str(ROOT / args[args.index("--config") + 1])]
        for path in paths:
            _, raw = load_config([path], overrides)
            s = raw["system"]
            used = [s["prompt_processor"], s["prompt_processor_multi_view"]]
            if s["prob_multi_view"] < 1.0:  # stage 2: VSD on single views
                used += [{"a": s["guidance"]["pretrained_model_name_or_path"]},
                         {"b": s["guidance"]["pretrained_model_name_or_path_lora"]}]  # fmt: skip
            for part in used:
                assert not any("stabilityai" in str(v) for v in part.values()), (path, part)


@pytest.mark.parametrize(
    "argv", [["--config", TINY1, "--train", "--gpu", "0,x"], ["--train", "--config", TINY1, "--pipeline", "p"]]
)
def test_command_line_syntax_errors(argv, capfd):
    with pytest.raises(SystemExit) as e:
        launch.main(argv)
    assert e.value.code == 2
    err = capfd.readouterr().err
    assert len([x for x in err.splitlines() if x.startswith("fourdfy: error:")]) == 1


def test_cuda_environment_sets_gpus_and_allocator_but_keeps_a_users_allocator(monkeypatch):
    from fourdfy.cli import CUDA_ALLOC_CONF_DEFAULT, cuda_environment

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    cuda_environment("1, 2")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1,2" and os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == CUDA_ALLOC_CONF_DEFAULT == "expandable_segments:True"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:128")
    cuda_environment(None)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0" and os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128"
