import dataclasses
import json

import numpy as np
import pytest

from model.domain import CLASSES
from model.pipeline import Pipeline
from model.quality_table import QualitySettings, run_quality, to_markdown, write

from .conftest import tiny_generator


def test_quality_table_reports_per_class_and_differences_to_the_few_shot_unet(tmp_path):
    pipe = Pipeline(tiny_generator(), None, inversion_steps=2)
    s = QualitySettings(draws=2, n_test=6, synthetic_sizes=(8,), n_ceiling=8, unet_steps=3, ceiling_steps=3,
                        inversion_steps=2, members=2, n_labeled=4, pool=6, branch_steps=3, n_unlabeled_shifted=12,
                        refiner_steps=3)
    partial = []
    report = run_quality(pipe, s, log=lambda m: None, on_partial=partial.append)
    methods = report["methods"]
    assert report["complete"] and len(partial) == 3          # after the ceiling and after each draw
    for name in ("unet_4_real", "served_pre_annotator", "served_pre_annotator_shifted", "interpreter_inversion",
                 "interpreter_inversion_shifted", "label_branch_inversion", "unet_synthetic_8", "unet_synthetic_8_shifted",
                 "unet_8_real", "served_pre_annotator_refined", "served_pre_annotator_refined_shifted",
                 "interpreter_ood_inversion_shifted", "unet_refined_synthetic_8_shifted",
                 "reference_unet_4_shifted_labels_shifted"):
        m = methods[name]
        assert len(m["runs"]) == 2, name
        assert list(m["per_class"]) == list(CLASSES), name
        present = [v for v in m["per_class"].values() if v is not None]
        # mIoU is the mean over the classes present in each run: the per-class means bracket it.
        assert min(present) - 1e-6 <= m["miou_mean"] <= max(present) + 1e-6, name
    # The baseline has no difference to itself; every other row states it, and it is consistent with the runs.
    assert "diff_vs_few_shot_mean" not in methods["unet_4_real"]
    served = methods["served_pre_annotator"]
    expected = np.mean(np.array(served["runs"]) - np.array(methods["unet_4_real"]["runs"]))
    assert abs(served["diff_vs_few_shot_mean"] - expected) < 0.02
    for name in ("pushed_label_agreement", "interpreter_label_agreement"):
        assert len(report["diagnostics"][name]["runs"]) == 2, name
    md = to_markdown(report)
    assert "| served_pre_annotator |" in md and md.splitlines()[0].endswith("| mouth | torso |")
    assert "| pushed_label_agreement (diagnostic) |" in md
    js, _ = write(report, tmp_path)
    assert json.loads(js.read_text())["methods"]["served_pre_annotator"]["runs"] == served["runs"]


def test_the_domain_shift_rows_alone_skip_the_ceiling_and_the_default_extras():
    pipe = Pipeline(tiny_generator(), None, inversion_steps=2)
    s = QualitySettings(draws=1, n_test=6, synthetic_sizes=(8,), n_ceiling=8, unet_steps=3, ceiling_steps=3,
                        inversion_steps=2, members=2, n_labeled=4, pool=6, branch_steps=3, n_unlabeled_shifted=12,
                        refiner_steps=3, default_rows=False)
    methods = run_quality(pipe, s, log=lambda m: None)["methods"]
    shifted = sorted(m for m in methods if m.endswith("shifted"))
    assert "served_pre_annotator_refined_shifted" in shifted and "reference_unet_4_shifted_labels_shifted" in shifted
    assert "unet_8_real" not in methods and "label_branch_inversion" not in methods and "unet_synthetic_8" not in methods
    for name in shifted:
        assert {"miou_mean", "miou_std", "per_class"} <= set(methods[name]), name


def test_the_table_keeps_its_refiner_and_a_resumed_run_reuses_it(tmp_path):
    from model.quality_table import table_refiner
    from model.refiner import Refiner

    pipe = Pipeline(tiny_generator(), None, inversion_steps=2)
    s = QualitySettings(n_unlabeled_shifted=8, pool=6, refiner_steps=3)
    logs: list[str] = []
    first = table_refiner(pipe, s, tmp_path / "refiner.state", logs.append)
    kept = tmp_path / "refiner.pt"
    assert kept.exists() and not (tmp_path / "refiner.state").exists()
    again = table_refiner(pipe, s, tmp_path / "refiner.state", logs.append)
    assert any("trained before" in m for m in logs)
    x = pipe.sample_images([1, 2])
    assert np.array_equal(again.refine(x), first.refine(x))
    assert Refiner.load(kept).meta["steps"] == 3
    # a run with other refiner settings does not reuse it: it trains (and keeps) its own
    table_refiner(pipe, dataclasses.replace(s, refiner_steps=4), tmp_path / "refiner.state", logs.append)
    assert any("trained with other settings" in m for m in logs)
    assert Refiner.load(kept).meta["steps"] == 4


@pytest.mark.parametrize("default_rows", [False, True])
def test_a_stopped_table_resumes_after_its_finished_draws_and_only_when_nothing_changed(default_rows):
    from model.quality_table import made_with, resume_point

    pipe = Pipeline(tiny_generator(), None, inversion_steps=2)
    s = QualitySettings(draws=2, n_test=6, synthetic_sizes=(8,), n_ceiling=8, unet_steps=3, ceiling_steps=3,
                        inversion_steps=2, members=2, n_labeled=4, pool=6, branch_steps=3, n_unlabeled_shifted=12,
                        refiner_steps=3, default_rows=default_rows)
    whole = run_quality(pipe, s, log=lambda m: None)

    class Stop(Exception):
        pass

    left: list[dict] = []

    def stop_after_first_draw(report: dict) -> None:
        left.append(json.loads(json.dumps(report)))       # as written to disk and read back
        if report["records"]["draws_done"] == 1:
            raise Stop

    try:
        run_quality(pipe, s, log=lambda m: None, on_partial=stop_after_first_draw)
    except Stop:
        pass
    stopped = left[-1]
    assert not stopped["complete"] and stopped["records"]["draws_done"] == 1
    logs: list[str] = []
    resumed = run_quality(pipe, s, log=logs.append, resume=stopped)
    assert any("keeping the 1 draw" in m for m in logs)
    assert "draw 1/2" not in logs and "draw 2/2" in logs            # the finished draw is not run again
    assert resumed["complete"] and resumed["resumed_after_draws"] == 1
    for part in ("methods", "diagnostics"):                          # the same table as the uninterrupted run
        assert resumed[part].keys() == whole[part].keys()
        for name, m in whole[part].items():
            assert resumed[part][name]["runs"] == m["runs"], name
            assert resumed[part][name]["per_class"] == m["per_class"], name
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed["refiner"]] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in whole["refiner"]]      # one per draw
    assert resumed["seconds"] >= stopped["seconds"]

    # Nothing is kept from a finished table, one without records, or one made with other settings, code,
    # device or given refiner.
    this_run = made_with(s, pipe.generator_id)
    assert resume_point(stopped, this_run).same
    assert resume_point(resumed, this_run)[0] == 0 and not resume_point(resumed, this_run).same
    assert resume_point({k: v for k, v in stopped.items() if k != "records"}, this_run)[0] == 0
    other = dataclasses.replace(s, unet_steps=4)
    start, why, _ = resume_point(stopped, made_with(other, pipe.generator_id))
    assert start == 0 and "settings" in why
    edited = {**stopped, "records": {**stopped["records"], "code": "0" * 16}}
    start, why, _ = resume_point(edited, this_run)
    assert start == 0 and "code" in why
    assert resume_point(stopped, made_with(s, "another-generator"))[0] == 0
    assert resume_point(stopped, made_with(s, pipe.generator_id, device="cuda:0"))[0] == 0
    start, why, same = resume_point(stopped, made_with(s, pipe.generator_id, refiner={"steps": 1200}))
    assert start == 0 and not same and "given refiner" in why
