"""The prompt-suite runner: finds each prompt's latest trial, collects eval.json files into one table."""

import json

import pytest

from fourdfy.evaluation import evaluate_trial as ev
from fourdfy.evaluation import suite
from synthetic_trials import tiny_clip_encoder


def fake_trial(root, name, prompt, stamp, metrics=None):
    trial = root / name / f"{suite.prompt_tag(prompt)}@{stamp}"
    (trial / "save").mkdir(parents=True)
    if metrics is not None:
        (trial / "save" / "eval.json").write_text(json.dumps({"step": 100, "static": False, "metrics": metrics}))
    return trial


def test_shipped_prompt_lists():
    mav3d = suite.read_prompts("mav3d_28.txt")
    assert len(mav3d) == 28 and len(set(mav3d)) == 28 and "A panda dancing" in mav3d
    assert not any(p.startswith("#") for p in mav3d)
    five = suite.read_prompts("fourdfy_user_study_5.txt")
    assert len(five) == 5 and set(five) <= set(mav3d)


def test_table_over_trials(tmp_path, capsys, monkeypatch):
    out = tmp_path / "outputs"
    fake_trial(out, "fourdfy_stage_3", "A panda dancing", "20260101-000000", {"clip_score": 10.0, "motion_amount": 0.5})
    fake_trial(out, "fourdfy_stage_3", "A panda dancing", "20260102-000000", {"clip_score": 30.0, "motion_amount": 0.1})
    fake_trial(out, "fourdfy_stage_2", "A goat drinking beer", "20260101-000000", {"clip_score": 20.0, "motion_amount": 0.0})
    pending = fake_trial(out, "fourdfy_stage_3", "A cat singing", "20260101-000000")
    prompts = tmp_path / "p.txt"
    prompts.write_text("# a comment\nA panda dancing\n\nA goat drinking beer\nA cat singing\nA bear driving a car\n")

    table = suite.collect(suite.read_prompts(prompts), out, progress=False)
    rows = {r["prompt"]: r for r in table["rows"]}
    assert rows["A panda dancing"]["clip_score"] == 30.0  # the latest trial
    assert rows["A goat drinking beer"]["status"] == "ok"
    assert rows["A cat singing"]["status"] == "not evaluated" and rows["A bear driving a car"]["status"] == "no trial"
    assert table["mean"]["clip_score"] == pytest.approx(25.0) and table["evaluated"] == 2 and table["total"] == 4
    only3 = suite.collect(["A goat drinking beer"], out, name="fourdfy_stage_3", progress=False)
    assert only3["rows"][0]["status"] == "no trial"

    def fake_evaluate(trial, encoder, settings, progress):  # stands in for rendering + CLIP
        (trial / "save" / "eval.json").write_text(json.dumps({"metrics": {"clip_score": 40.0}}))

    monkeypatch.setattr(ev, "evaluate_trial", fake_evaluate)
    table = suite.collect(["A cat singing"], out, evaluate=True, clip=tiny_clip_encoder(), progress=False)
    assert table["rows"][0]["status"] == "ok" and table["mean"]["clip_score"] == 40.0
    assert (pending / "save" / "eval.json").is_file()

    (pending / "save" / "eval.json").unlink()
    stem = tmp_path / "results" / "suite.v1"
    assert suite.main([str(prompts), "--outputs", str(out), "--out", str(stem), "--commands"]) == 0
    md = (tmp_path / "results" / "suite.v1.md").read_text()
    assert md.count("\n") == 2 + 4 + 1 and "| **mean** | 2/4 |" in md and "| A panda dancing | ok | 100 | 30.00 |" in md
    assert json.loads((tmp_path / "results" / "suite.v1.json").read_text())["mean"]["clip_score"] == 25.0
    assert 'launch.py --pipeline configs/fourdfy.yaml --train --gpu 0 system.prompt_processor.prompt="A bear driving a car"' in capsys.readouterr().out
