"""scripts/byo_path.py (the bring-your-own-checkpoint path, timed) runs every stage in quick mode on a narrow
32 px generator, against the private Redis, and writes a JSON with real outcomes; its rosinality checkpoint
has the layout of rosinality's own (the parity fixture's keys and shapes)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_KEYS = ROOT / "tests" / "fixtures" / "rosinality-stylegan2" / "keys.txt"


@pytest.fixture(scope="module")
def byo():
    spec = importlib.util.spec_from_file_location("byo_path", ROOT / "scripts" / "byo_path.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not FIXTURE_KEYS.is_file(), reason="rosinality parity fixture not found")
def test_the_checkpoint_has_rosinalitys_layout(byo):
    """Same keys, order, shapes and parameter/buffer split as the checkpoint rosinality's code wrote."""
    sd, latent_avg = byo.rosinality_state(32, style_dim=32, n_mlp=2, channels={4: 32, 8: 24, 16: 16, 32: 8})
    rows = [line.split("\t") for line in FIXTURE_KEYS.read_text().splitlines()]
    assert [(k, list(v.shape)) for k, v in sd.items()] == [(r[0], json.loads(r[1])) for r in rows]
    assert {k for k in sd if byo.is_rosinality_buffer(k)} == {r[0] for r in rows if r[2] == "buffer"}
    assert latent_avg.shape == (32,)
    # the real widths: 512 up to 64 px, then halved per resolution
    assert byo.rosinality_channels(256) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128}
    # `dgan push --n 1000`: chunks of 500 (450 kept each), the last one only the 112 its 100 tasks need
    assert byo.push_plan(1000) == {"n": 1000, "chunk": 500, "chunks": 3, "synthesized": 1112}


def test_quick_run_times_every_stage(byo, tmp_path, redis_url):
    out = tmp_path / "byo.json"
    result = byo.main(["--quick", "--size", "32", "--width-divisor", "16", "--page", "10", "--predict-budget-s", "0",
                       "--finish-queued", "--out", str(out), "--workdir", str(tmp_path / "work"),
                       "--redis-url", redis_url])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result, default=str))
    assert result["status"] == "complete" and result["size"] == 32
    stages = result["stages"]
    assert list(stages) == ["checkpoint", "encoder", "fit", "predict_before_segmenter", "segmenter",
                            "predict_after_segmenter", "push"]
    for name, rec in stages.items():
        assert "error" not in rec and rec["stage_wall_s"] > 0 and rec["peak_rss_gb_so_far"] > 0, name

    ck = stages["checkpoint"]
    assert ck["converted_parameters"] == ck["built_parameters"] > 0 and ck["parameters_match"]
    assert ck["latent_avg_is_w_avg"] and ck["mapping_max_abs_diff_vs_rosinality_formula"] < 1e-4
    assert ck["channels"] == {"4": 32, "8": 32, "16": 32, "32": 32} and ck["mapping_layers"] == 8
    assert ck["convert_s"] > 0 and ck["gflop_per_image"] > 0 and ck["forward_s_per_image_batch4"] > 0

    enc = stages["encoder"]
    assert enc["s_per_step"] > 0 and enc["default_recipe_s"] > 0
    assert enc["default_recipe_s_is"].startswith("extrapolated")            # quick never trains the whole recipe
    assert enc["without_an_encoder"]["pipeline_encoder"] is None

    fit = stages["fit"]
    assert fit["fit_job_s"] > 0 and fit["model_version"] == "dgan-v1" and fit["encoder"] is None
    assert fit["interpreter"]["in_dim"] == ck["feature_dim"] and fit["interpreter"]["members"] == 10
    assert fit["cv_miou"] is not None and fit["timings"]["latents>invert"]["calls"] == 1
    assert fit["segmenter_job_queued"]

    before = stages["predict_before_segmenter"]
    # budget 0: nothing fits, so every task is queued for the job, which imports them all
    assert before["page_s"] > 0 and before["answered"] == 0 and before["queued_for_the_job"] == 10
    assert before["model_versions"] == ["dgan-v1"] and before["predict_job_enqueued"]
    assert before["queued_job"]["imported"] == 10 and before["queued_job"]["job_s"] > 0
    assert before["miou_answered_vs_exact_masks"] is None

    seg = stages["segmenter"]
    assert seg["job_s"] > 0 and seg["model_version"] == "dgan-v1-segmenter" and seg["recipe"] == "quick"
    after = stages["predict_after_segmenter"]
    assert after["page_s"] > 0 and after["model_versions"] == ["dgan-v1-segmenter"]
    # the page after the segmenter runs under the backend's own budget: all answered
    assert (after["answered"], after["queued_for_the_job"]) == (10, 0) and after["within_label_studio_100s"]
    assert 0 <= after["miou_answered_vs_exact_masks"] <= 100

    push = stages["push"]
    assert push["tasks"] == 10 and push["imported_seeds_distinct"] and push["labels_by"] == "segmenter"
    assert push["synthesized"] == 12 and sum(push["tasks_per_request"]) == 10
    assert push["push_s"] > 0 and push["per_1000_tasks_s"] > 0 and push["per_1000_tasks_s_is"].startswith("scaled")

    summary = result["summary"]
    for key in ("convert_s", "encoder_default_recipe_s", "fit_s", "predict_page_s_before_segmenter",
                "predict_page_s_after_segmenter", "segmenter_job_s", "push_per_1000_tasks_s"):
        assert summary[key] > 0, key


def test_reduced_segmenter_recipe_extrapolates_the_default(byo, tmp_path, redis_url):
    """The 256 px run's segmenter: the default recipe's U-Net and batch, fewer steps, and the default recipe's
    time extrapolated from them."""
    result = byo.main(["--quick", "--size", "32", "--width-divisor", "16", "--segmenter", "reduced",
                       "--segmenter-steps", "4", "--segmenter-pool", "4", "--page", "2", "--push-n", "2",
                       "--fit-images", "2", "--out", str(tmp_path / "r.json"), "--redis-url", redis_url])
    seg = result["stages"]["segmenter"]
    assert seg["base"] == 16 and seg["batch"] == 16 and seg["teacher_steps"] == seg["student_steps"] == 4
    assert seg["pool"] == 4 and seg["default_recipe_s"] > seg["job_s"] > 0
    assert seg["default_recipe_s_is"].startswith("extrapolated")
    assert result["stages"]["predict_after_segmenter"]["model_versions"] == ["dgan-v1-segmenter"]
    assert result["summary"]["segmenter_default_recipe_s"] == seg["default_recipe_s"]
