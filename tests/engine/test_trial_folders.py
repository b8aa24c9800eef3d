"""Issue 14, "Data loss and silent damage", items 1, 2, 4, 5, 6, 7: the code snapshot, safe tags, exclusive trial
folders, ``last.ckpt`` always the newest, resume keeping the trial's first files, stale temporaries removed."""

import os
import subprocess
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import launch
from fourdfy import trial as trial_mod
from fourdfy.experiment import load_config, safe_tag
from fourdfy.trial import TRIAL_RECORD_ENV, create_trial_dir, snapshot_code
from fourdfy.utils.checkpoint_io import clean_stale_temporaries

ROOT = Path(__file__).resolve().parents[2]
TINY1 = str(ROOT / "configs" / "smoke" / "fourdfy_stage_1_tiny.yaml")
PROMPT = "system.prompt_processor.prompt=a panda dancing"
QUICK = ["data.single_view.n_test_views=1", "trainer.enable_progress_bar=false", "trainer.val_check_interval=100"]


# -- 1. the code snapshot ----------------------------------------------------------------------------------------


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=repo, check=True,
                   capture_output=True)  # fmt: skip


@pytest.fixture
def checkout(tmp_path) -> Path:
    """A small git checkout laid out like this project, with trial folders inside it (not ignored by git)."""
    repo = tmp_path / "repo"
    (repo / "fourdfy").mkdir(parents=True)
    (repo / "fourdfy" / "__init__.py").write_text("")
    (repo / "fourdfy" / "model.py").write_text("x = 1\n")
    (repo / "configs").mkdir()
    (repo / "configs" / "a.yaml").write_text("a: 1\n")
    (repo / "README.md").write_text("readme\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "init")
    (repo / "fourdfy" / "new_module.py").write_text("y = 2\n")  # untracked source of the package: kept
    (repo / "fourdfy" / "weights.bin").write_bytes(b"\0" * 1000)  # untracked, not a source file: left out
    (repo / "notes.txt").write_text("scratch\n")  # untracked outside the package folders: left out
    return repo


def make_trial(folder: Path, payload: int = 50_000) -> None:
    (folder / "configs").mkdir(parents=True)
    (folder / "configs" / "parsed.yaml").write_text("name: x\n")
    (folder / "ckpts").mkdir()
    (folder / "ckpts" / "last.ckpt").write_bytes(b"\1" * payload)
    (folder / "code" / "fourdfy").mkdir(parents=True)
    (folder / "code" / "fourdfy" / "model.py").write_text("x = 1\n")


def test_code_snapshot_holds_the_project_source_only(checkout, tmp_path):
    make_trial(checkout / "runs" / "exp" / "t@1")  # exp_root_dir inside the checkout
    make_trial(checkout / "fourdfy" / "outputs" / "exp" / "t@2")  # even under a package folder
    copied = snapshot_code(tmp_path / "code", exclude=[checkout / "runs"], root=checkout)
    assert copied == ["README.md", "configs/a.yaml", "fourdfy/__init__.py", "fourdfy/model.py", "fourdfy/new_module.py"]
    assert sorted(str(p.relative_to(tmp_path / "code")) for p in (tmp_path / "code").rglob("*") if p.is_file()) == copied


def test_code_snapshot_does_not_grow_with_trials(checkout):
    """4D-fy's snapshot copied every earlier trial (2 MB -> 16 MB -> 1 GB ...): five trials, five equal snapshots."""
    sizes = []
    for i in range(5):
        t = checkout / "runs" / "exp" / f"t@{i}"
        make_trial(t)
        snapshot_code(t / "code", exclude=[checkout / "runs"], root=checkout)
        sizes.append(sum(p.stat().st_size for p in (t / "code").rglob("*") if p.is_file()))
    assert len(set(sizes)) == 1 and sizes[0] < 1000, sizes


def test_code_snapshot_size_caps_warn(checkout, tmp_path, monkeypatch, caplog):
    (checkout / "fourdfy" / "big.py").write_text("#" * 5000)
    monkeypatch.setattr(trial_mod, "SNAPSHOT_MAX_FILE_BYTES", 4000)
    monkeypatch.setattr(trial_mod, "SNAPSHOT_MAX_BYTES", 15)
    copied = snapshot_code(tmp_path / "code", root=checkout)
    assert "fourdfy/big.py" not in copied and sum((checkout / c).stat().st_size for c in copied) <= 15
    assert "left out 1 file(s)" in caplog.text and "fourdfy/big.py" in caplog.text
    assert "code snapshot: stopped at" in caplog.text


# -- 2. safe, bounded tags; never outside exp_root_dir --------------------------------------------------------------


def test_tags_keep_4dfy_form_and_are_safe():
    assert safe_tag("a_panda_dancing") == "a_panda_dancing"
    assert safe_tag("a panda, dancing") == "a_panda,_dancing"
    assert "/" not in safe_tag("a/b c") and safe_tag("a/b c") == "a_b_c"
    assert not safe_tag("../../../escaped").startswith(".") and "/" not in safe_tag("../../../escaped")
    long = safe_tag("a" * 500)
    assert len(long.encode()) <= 120 and safe_tag(long) == long
    assert safe_tag("a" * 500) != safe_tag("a" * 499 + "b")  # cut prompts stay apart (hash of the whole prompt)
    assert len(safe_tag("ü" * 300).encode()) <= 120


@pytest.mark.parametrize("prompt", ["../../../escaped", "a/b c", "p" * 500, "..", "/etc/passwd"])
def test_trial_folder_is_one_folder_inside_exp_root(prompt, tmp_path):
    root = tmp_path / "root"
    cfg, raw = load_config([TINY1], [f"system.prompt_processor.prompt={prompt}", f"exp_root_dir={root}"])
    trial = create_trial_dir(cfg, raw)
    assert trial.parent == root / "fourdfy_stage_1_tiny" and trial.is_dir()
    assert len(trial.name.encode()) <= 255
    assert [p for p in tmp_path.rglob("*") if root not in (p, *p.parents)] == []


# -- 4. exclusive trial folders ----------------------------------------------------------------------------------


def test_same_second_launches_get_their_own_folders(tmp_path):
    cfg, raw = load_config([TINY1], [PROMPT, f"exp_root_dir={tmp_path}", "timestamp='@20240101-000000'"])
    made: list[Path] = []

    def claim() -> None:
        c = SimpleNamespace(**{k: getattr(cfg, k) for k in ("exp_dir", "exp_root_dir", "tag", "timestamp", "trial_dir",
                                                           "trial_name")})  # fmt: skip
        made.append(create_trial_dir(c, dict(raw)))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    names = sorted(p.name for p in made)
    assert len(set(names)) == 8
    assert names[0] == "a_panda_dancing@20240101-000000" and "a_panda_dancing@20240101-000000-7" in names


@pytest.fixture(scope="module")
def two_runs_then_resume(tmp_path_factory):
    """Two training runs launched "in the same second" (same timestamp, different seeds); then the first is resumed
    in place with different checkpoint settings (every_n_train_steps: Lightning then forgets its last.ckpt and
    would write last-v1.ckpt), after a kill had
    left a checkpoint temporary behind."""
    out = tmp_path_factory.mktemp("runs")
    stamp = "timestamp='@20240101-000000'"
    first = ["--config", TINY1, "--train", "--gpu", "0", PROMPT, f"exp_root_dir={out}", stamp, "seed=1",
             "trainer.max_steps=2", *QUICK]  # fmt: skip
    assert launch.main(first) == 0
    os.environ[TRIAL_RECORD_ENV] = str(out / "record")  # how a pipeline learns which folder a stage used
    try:
        assert launch.main(["--config", TINY1, "--train", PROMPT, f"exp_root_dir={out}", stamp, "seed=2",
                            "trainer.max_steps=2", *QUICK]) == 0  # fmt: skip
    finally:
        del os.environ[TRIAL_RECORD_ENV]
    a, b = sorted((out / "fourdfy_stage_1_tiny").iterdir())
    assert (out / "record").read_text() == str(b)
    stale = a / "ckpts" / ".last.ckpt.k1ll3d.tmp"
    stale.write_bytes(b"PK half a checkpoint")
    resume = ["--config", str(a / "configs" / "parsed.yaml"), "--train", f"resume={a / 'ckpts' / 'last.ckpt'}",
              "trainer.max_steps=3", "checkpoint.every_n_train_steps=3"]  # fmt: skip
    assert launch.main(resume) == 0
    return SimpleNamespace(a=a, b=b, first=first, resume=resume, stale=stale)


def test_second_launch_in_the_same_second_gets_its_own_trial(two_runs_then_resume):
    r = two_runs_then_resume
    assert r.a.name == "a_panda_dancing@20240101-000000" and r.b.name == "a_panda_dancing@20240101-000000-1"
    assert "seed: 2" in (r.b / "configs" / "parsed.yaml").read_text()
    assert "timestamp: '@20240101-000000-1'" in (r.b / "configs" / "parsed.yaml").read_text()
    assert [p.name for p in (r.b / "ckpts").iterdir()] == ["last.ckpt"]
    # relaunching from the second trial's parsed.yaml finds that trial again
    cfg, _ = load_config([str(r.b / "configs" / "parsed.yaml")], [])
    assert Path(cfg.trial_dir) == r.b


def test_last_ckpt_is_always_the_newest(two_runs_then_resume):
    r = two_runs_then_resume
    assert sorted(p.name for p in (r.a / "ckpts").iterdir()) == ["last.ckpt"]  # no last-v1.ckpt
    assert torch.load(r.a / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 3


def test_resume_keeps_first_config_and_appends_log(two_runs_then_resume):
    r = two_runs_then_resume
    assert (r.a / "configs" / "raw.yaml").read_text() == Path(TINY1).read_text()  # not the parsed.yaml resumed from
    log = (r.a / "log.txt").read_text()
    assert log.startswith("# started ")
    assert log.index(" ".join(r.first[:3])) < log.index("# resumed ") < log.index("resume=")
    assert "max_steps: 3" in (r.a / "configs" / "parsed.yaml").read_text()  # parsed.yaml: the latest run's config
    assert (r.a / "code" / "fourdfy" / "run.py").is_file()


def test_stale_checkpoint_temporaries_are_removed(two_runs_then_resume, tmp_path):
    assert not two_runs_then_resume.stale.exists()
    (tmp_path / ".last.ckpt.abc.tmp").write_text("x")
    (tmp_path / "last.ckpt").write_text("x")
    assert clean_stale_temporaries(tmp_path) == [tmp_path / ".last.ckpt.abc.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_log_txt_holds_the_run_log(two_runs_then_resume):
    log = (two_runs_then_resume.a / "log.txt").read_text()
    assert "[INFO] fourdfy: trial folder: " in log
    if not torch.cuda.is_available():  # logged before the trial folder existed: held, then written
        assert "[WARNING] fourdfy: --gpu 0: no CUDA device is available" in log
    assert log.rstrip().splitlines()[-1].endswith(f"trial folder: {two_runs_then_resume.a}")
