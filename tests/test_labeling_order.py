"""The labeling order: novelty / value math on hand-made embeddings, the score /predict serves as the
labeled set changes (segmenter and interpreter), `dgan next` on a stand-in Label Studio, and the
simulation bench's loop on tiny settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ls_backend.backend import Backend
from ls_backend.brush import parse_label_config
from ls_backend.client import LabelStudioError
from ls_backend.config import Settings
from model.generator.checkpoints import save_generator
from model.images import png_data_uri, to_uint8
from model.interpreter import InterpreterConfig
from model.labeling import fit_from_latents
from model.labeling_order import (MIN_LABELED, image_embeddings, labeled_spacing, labeling_score, labeling_value,
                                  latent_embeddings, nearest_distance, novelty, select_next, why)
from model.segmenter import Segmenter, UNet, UNetConfig

from .conftest import tiny_generator

CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="dark"/><Label value="bright"/></BrushLabels></View>"""


# -- the math -----------------------------------------------------------------------------------------
LABELED = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])      # spacing: every point's nearest other is 2 away


def test_novelty_is_zero_for_a_copy_half_at_the_labeled_spacing_and_grows_with_distance():
    assert labeled_spacing(LABELED) == pytest.approx(2.0)
    tasks = np.array([[2.0, 0.0],        # a copy of a labeled image
                      [-2.0, 0.0],       # as far from the labeled set as labeled images are from one another
                      [10.0, 10.0],      # the farthest
                      [1.0, 0.0]])
    nov = novelty(tasks, LABELED)
    assert nov[0] == 0.0 and nov[1] == pytest.approx(0.5)
    assert np.argmax(nov) == 2 and 0.5 < nov[2] < 1.0        # farthest: highest, bounded below 1
    assert nov[3] == pytest.approx(1 / 3)                      # d = 1, r = 2
    # absolute per task: scoring a task alone or among others gives the same novelty
    assert novelty(tasks[2:3], LABELED)[0] == nov[2]
    assert nearest_distance(tasks, LABELED).tolist() == pytest.approx([0, 2, np.hypot(8, 10), 1])
    # chunked to a memory budget: one row at a time gives the same distances
    import model.labeling_order as lo

    budget, lo.DIFF_BYTES = lo.DIFF_BYTES, 1
    try:
        assert nearest_distance(tasks, LABELED).tolist() == pytest.approx([0, 2, np.hypot(8, 10), 1])
    finally:
        lo.DIFF_BYTES = budget
    with pytest.raises(ValueError, match=f"at least {MIN_LABELED} labeled"):
        novelty(tasks, LABELED[:1])
    with pytest.raises(ValueError, match="dimensions"):
        novelty(np.zeros((2, 3)), LABELED)


def test_ascending_score_puts_uncertain_and_novel_first():
    cert = np.array([0.9, 0.3, 0.9, 0.3])       # sure, unsure, sure, unsure
    nov = np.array([0.1, 0.1, 0.8, 0.8])        # known, known, novel, novel
    value = labeling_value(cert, nov)
    assert value == pytest.approx([0.1, 0.4, 0.45, 0.75])       # ½·n + ½·(1 − c)
    score = labeling_score(cert, nov)
    assert score == pytest.approx(1 - value)
    assert np.argsort(score).tolist()[0] == 3 and np.argsort(score).tolist()[-1] == 0
    assert labeling_score(cert, None) == pytest.approx(cert)       # no novelty: the certainty itself
    assert labeling_score(cert, nov, weight=0.0) == pytest.approx(cert)
    assert labeling_score(cert, nov, weight=1.0) == pytest.approx(1 - nov)
    assert why(0.3, 0.1) == "uncertain" and why(0.9, 0.8) == "novel" and why(0.2, None) == "uncertain"
    with pytest.raises(ValueError, match="weight"):
        labeling_value(cert, nov, weight=1.5)


def test_select_next_does_not_hand_out_two_near_copies():
    # Two near-identical novel tasks, one mildly novel, one known; all equally uncertain.
    tasks = np.array([[6.0, 6.0], [6.0, 6.01], [-3.0, 0.0], [0.0, 0.1]])
    cert = np.full(4, 0.5)
    picks = select_next(cert, tasks, LABELED, k=4)
    assert [p.index for p in picks] == [1, 2, 3, 0]       # the copy of the first pick drops behind the known one
    assert picks[0].score == pytest.approx(labeling_score(cert[1:2], novelty(tasks[1:2], LABELED))[0])
    assert picks[3].novelty == pytest.approx(0.01 / 2.01)  # measured against the first pick, now "labeled"
    # without embeddings (or fewer than 2 labeled images): least certain first
    ranked = select_next(np.array([0.8, 0.2, 0.5]), None, None, k=5)
    assert [p.index for p in ranked] == [1, 2, 0] and ranked[0].score == 0.2 and ranked[0].novelty is None
    assert [p.index for p in select_next(np.array([0.8, 0.2]), tasks[:2], LABELED[:1], k=2)] == [1, 0]


# -- what /predict serves -------------------------------------------------------------------------------
@pytest.fixture
def backend(tmp_path) -> Backend:
    gen = save_generator(tiny_generator(), tmp_path / "g.pt")
    settings = Settings.from_env({"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "x" * 40,
                                  "MODEL_DIR": str(tmp_path / "models"), "DGAN_GENERATOR": str(gen),
                                  "DGAN_INVERSION_STEPS": "2"})
    return Backend(settings)


def _version(backend: Backend, project: int, ws: torch.Tensor, keep_ws: bool = True) -> tuple[int, np.ndarray]:
    """Fit a version on brightness masks of the generator's images of ``ws``, keeping its labeled images
    (and their latents, as Backend.fit does) beside it."""
    G = backend.generator
    images = to_uint8(G.synthesis(ws))
    gray = G.synthesis(ws).mean(1)
    masks = ((gray > -0.2).long() + (gray > 0.3).long()).numpy().astype(np.uint8)
    interp = fit_from_latents(G, ws, masks, parse_label_config(CONFIG).class_names,
                              InterpreterConfig(in_dim=0, n_classes=3, members=3, epochs=4))
    version, path = backend.store.next_version_paths(project)
    interp.save(path)
    extra = {"ws": ws.numpy()} if keep_ws else {}
    np.savez_compressed(backend.store.training_data_path(project, version), images=images, masks=masks, **extra)
    backend.store.commit_version(project, version, {"model_version": f"dgan-v{version}"})
    return version, images


def _items(backend: Backend, images: np.ndarray, seeds: list[int] | None = None):
    lm = parse_label_config(CONFIG)
    tasks = [{"id": i, "data": {"image": png_data_uri(img)}} for i, img in enumerate(images)]
    if seeds is not None:
        for t, s in zip(tasks, seeds):
            t["data"].update(dgan_seed=s, dgan_generator_id=backend.generator_id)
    return [backend.load_task_image(t, lm) for t in tasks], lm


def test_segmenter_scores_follow_the_labeled_set(backend):
    from model.synthesis import latents_for_seeds

    G = backend.generator
    torch.manual_seed(0)
    seg = Segmenter(UNet(UNetConfig(n_classes=3, base=4)), parse_label_config(CONFIG).class_names, backend.generator_id)
    v1, labeled1 = _version(backend, 5, latents_for_seeds(G, list(range(0, 6))))
    seg.save(backend.store.segmenter_path(5, v1))
    tasks = to_uint8(G.synthesis(latents_for_seeds(G, list(range(100, 106)))))
    items, lm = _items(backend, tasks)
    first = backend.predict_items(5, items, lm)
    assert {e["model_version"] for e in first} == {"dgan-v1-segmenter"}
    # The served score is 1 − (½·novelty + ½·(1 − certainty)): novelty in the U-Net's own features
    # against the images the version was trained on.
    loaded = backend.segmenter(5)[1]
    pred = loaded.label(tasks)
    cert = np.clip(1 - pred.score / np.log(3), 0, 1)
    nov1 = novelty(image_embeddings(loaded.model, tasks), image_embeddings(loaded.model, labeled1))
    assert [e["score"] for e in first] == pytest.approx(np.round(labeling_score(cert, nov1), 4).tolist(), abs=1e-4)
    assert (nov1 > 0).all()

    # A newer version whose labeled set now holds these very tasks: they are no longer novel, so the same
    # model's scores go up (later in the order), certainty unchanged.
    v2, _ = _version(backend, 5, latents_for_seeds(G, list(range(0, 6)) + list(range(100, 106))))
    seg.save(backend.store.segmenter_path(5, v2))
    second = backend.predict_items(5, items, lm)
    assert {e["model_version"] for e in second} == {"dgan-v2-segmenter"}
    assert [e["score"] for e in second] == pytest.approx(np.round(labeling_score(cert, np.zeros(6)), 4).tolist(),
                                                         abs=1e-4)
    assert all(b["score"] > a["score"] for a, b in zip(first, second))
    assert not list((backend.store.root / "latents").glob("*.pt"))     # nothing inverted for the segmenter


def test_the_drift_images_are_a_sample_of_the_whole_project(backend):
    """project_images samples uniformly over every task (not the first ones Label Studio lists), leaves
    pushed synthetic tasks out and says nothing went wrong when Label Studio is unreachable."""
    images = np.stack([np.full((16, 16, 3), i, np.uint8) for i in range(60)])
    tasks = [{"id": i, "data": {"image": png_data_uri(img)}} for i, img in enumerate(images)]
    for t in tasks[:5]:
        t["data"]["dgan_seed"] = 1                                  # pushed synthetic: never in the pool
    backend.client = FakeLabelStudio(tasks)
    got = backend.project_images(4, 10)
    ids = sorted(int(x) for x in got[:, 0, 0, 0])                   # each image's pixel value is its task id
    assert len(ids) == 10 and len(set(ids)) == 10 and min(ids) >= 5 and max(ids) >= 20
    assert sorted(int(x) for x in backend.project_images(4, 10)[:, 0, 0, 0]) == ids      # seeded: the same sample
    assert len(backend.project_images(4, 500)) == 55
    backend.client = FakeLabelStudio(tasks, fail=True)
    assert backend.project_images(4, 10) is None


def test_interpreter_scores_measure_novelty_in_w(backend):
    from model.synthesis import latents_for_seeds

    G = backend.generator
    labeled_seeds = [0, 1, 2, 3]
    ws_lab = latents_for_seeds(G, labeled_seeds)
    _version(backend, 6, ws_lab)
    seeds = [2, 50, 51]                           # the first is a labeled image again
    ws = latents_for_seeds(G, seeds)
    items, lm = _items(backend, to_uint8(G.synthesis(ws)), seeds)
    entries = backend.predict_items(6, items, lm)
    assert {e["model_version"] for e in entries} == {"dgan-v1"}
    _, interp = backend.interpreter(6)
    cert = np.clip(1 - backend.pipeline.label(interp, ws)[1].score / np.log(3), 0, 1)
    nov = novelty(latent_embeddings(ws), latent_embeddings(ws_lab))
    assert nov[0] == pytest.approx(0.0, abs=1e-5) and (nov[1:] > 1e-3).all()   # a copy: 0 up to float error
    assert [e["score"] for e in entries] == pytest.approx(np.round(labeling_score(cert, nov), 4).tolist(), abs=1e-4)

    # A version fitted before the labeling order kept no latents: the score is the certainty, as before.
    _version(backend, 7, ws_lab, keep_ws=False)
    old = backend.predict_items(7, items, lm)
    assert [e["score"] for e in old] == pytest.approx(np.round(cert, 4).tolist(), abs=1e-4)


def test_a_fit_keeps_the_labeled_latents_the_interpreter_measures_novelty_against(backend):
    from ls_backend.brush import mask_to_results
    from model.synthesis import latents_for_seeds

    G, lm = backend.generator, parse_label_config(CONFIG)
    seeds = [30, 31, 32]
    ws = latents_for_seeds(G, seeds)
    items, _ = _items(backend, to_uint8(G.synthesis(ws)), seeds)
    gray = G.synthesis(ws).mean(1)
    masks = ((gray > -0.2).long() + (gray > 0.3).long()).numpy().astype(np.uint8)
    tasks = [{"id": i, "data": {"image": png_data_uri(to_uint8(G.synthesis(ws[i:i + 1]))[0]), "dgan_seed": s,
                                "dgan_generator_id": backend.generator_id}} for i, s in enumerate(seeds)]
    annotated = [(t, {"id": 50 + i, "result": mask_to_results(m, lm)}) for i, (t, m) in enumerate(zip(tasks, masks))]

    class Annotated(FakeLabelStudio):
        def annotated_tasks(self, project: int):
            return annotated

    backend.client = Annotated([t for t, _ in annotated])
    meta = backend.fit(8)
    with np.load(backend.store.training_data_path(8, meta["version"])) as data:
        assert np.allclose(data["ws"], ws.numpy(), atol=1e-5)     # the exact latents of the seeds
    scores = [e["score"] for e in backend.predict_items(8, items, lm)]
    cert = np.clip(1 - backend.pipeline.label(backend.interpreter(8)[1], ws)[1].score / np.log(3), 0, 1)
    assert scores == pytest.approx(np.round(1 - 0.5 * (1 - cert), 4).tolist(), abs=1e-4)   # labeled: novelty 0


# -- dgan next ----------------------------------------------------------------------------------------
class FakeLabelStudio:
    def __init__(self, tasks: list[dict], fail: bool = False) -> None:
        self.tasks, self.fail = tasks, fail

    def auth_headers(self) -> dict:
        return {"Authorization": "Token x"}

    def label_config(self, project: int) -> str:
        if self.fail:
            raise LabelStudioError("cannot reach Label Studio at http://127.0.0.1:9 for GET project 5 "
                                   "(ConnectError: refused); check LABEL_STUDIO_URL and that Label Studio is running")
        return CONFIG

    def iter_tasks(self, project: int):
        yield from self.tasks


def test_next_tasks_ranks_unlabeled_real_tasks(backend):
    from ls_backend.next_tasks import NoModelError, format_table, next_tasks
    from model.synthesis import latents_for_seeds

    G = backend.generator
    with pytest.raises(NoModelError, match="no model yet.*train"):
        next_tasks(backend, 5, k=4)
    _, labeled = _version(backend, 5, latents_for_seeds(G, list(range(6))))
    seg = Segmenter(UNet(UNetConfig(n_classes=3, base=4)), parse_label_config(CONFIG).class_names, backend.generator_id)
    seg.save(backend.store.segmenter_path(5, 1))
    images = to_uint8(G.synthesis(latents_for_seeds(G, list(range(200, 210)))))
    tasks = [{"id": 10 + i, "data": {"image": png_data_uri(img)}, "annotations": []} for i, img in enumerate(images)]
    tasks[0]["annotations"] = [{"id": 1, "result": []}]                 # annotated
    tasks[1]["data"]["dgan_seed"] = 7                                      # pushed synthetic
    tasks[2]["data"]["image"] = "http://elsewhere.example/x.png"          # unreadable
    tasks.append({"id": 99, "data": {"image": png_data_uri(images[3])}})   # a copy of task 13
    backend.client = FakeLabelStudio(tasks)
    report = next_tasks(backend, 5, k=4, batch=3)
    assert report["candidates"] == 8 and report["unreadable"] == 1 and report["novelty_measured"]
    assert report["model_version"] == "dgan-v1-segmenter"
    ids = [r["task"] for r in report["next"]]
    assert len(ids) == 4 and not {10, 11, 12} & set(ids) and not {13, 99} <= set(ids)   # never both copies
    # The first pick is the candidate the served score ranks first.
    items, lm = _items(backend, images[3:])
    served = backend.predict_items(5, items, lm)
    assert report["next"][0]["score"] == pytest.approx(min(e["score"] for e in served), abs=1e-4)
    assert all(0 <= r["certainty"] <= 1 and 0 <= r["novelty"] < 1 and r["why"] in ("uncertain", "novel")
               for r in report["next"])
    table = format_table(report)
    assert "next 4 of 8 unlabeled tasks by dgan-v1-segmenter" in table and str(ids[0]) in table
    assert len(next_tasks(backend, 5, k=50)["next"]) == 8

    backend.client = FakeLabelStudio(tasks, fail=True)
    with pytest.raises(LabelStudioError, match="cannot reach Label Studio"):
        next_tasks(backend, 5)


def test_dgan_next_command_errors_are_one_line(tmp_path, monkeypatch, capsys):
    from ls_backend.cli import main

    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "x" * 40)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    assert main(["next", "--project", "3", "--k", "4"]) == 2
    err = capsys.readouterr().err
    assert "dgan next: error: project 3 has no model yet" in err and "Traceback" not in err
    versions = tmp_path / "models" / "projects" / "3" / "interpreters"
    versions.mkdir(parents=True)
    (versions / "v0001.pt").write_bytes(b"")
    (versions / "v0001.json").write_text("{}")
    assert main(["next", "--project", "3"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach Label Studio at http://127.0.0.1:9" in err and "Traceback" not in err


# -- the simulation bench ----------------------------------------------------------------------------
def test_labels_to_target_interpolates_the_first_crossing():
    from model.bench_labeling_order import labels_to_target

    counts = [4, 8, 12, 16]
    assert labels_to_target(counts, [50, 60, 70, 80], 80) == 16.0
    assert labels_to_target(counts, [50, 60, 70, 80], 65) == 10.0
    assert labels_to_target(counts, [50, 82, 70, 80], 80) == pytest.approx(4 + 4 * 30 / 32, abs=0.01)
    assert labels_to_target(counts, [90, 60, 70, 80], 80) == 4.0
    assert labels_to_target(counts, [50, 60, 70, 79], 80) is None


def test_bench_loop_on_tiny_settings():
    from model.bench import BENCHES
    from model.bench_labeling_order import OrderSettings, run_labeling_order
    from model.cli import bench_kwargs
    from ls_backend.cli import build_parser

    s = OrderSettings(start=2, step=2, max_labels=6, draws=1, pool=16, n_test=6, steps=3, batch=2, base=4, size=32)
    logs: list[str] = []
    r = run_labeling_order(s, log=logs.append)
    assert {"labels_to_target_ranked", "labels_to_target_random", "target_miou", "ranked_miou_mean",
            "random_miou_mean", "per_draw", "draws", "saving"} <= set(r)
    assert r["label_counts"] == [2, 4, 6] and list(r["ranked_miou_mean"]) == ["2", "4", "6"]
    assert r["target_miou"] == r["random_miou_mean"]["6"]
    assert r["ranked_miou_mean"]["2"] == r["random_miou_mean"]["2"]          # the same start
    assert all(0 <= v <= 100 for v in [*r["ranked_miou_mean"].values(), *r["random_miou_mean"].values()])
    assert 2 <= r["labels_to_target_random"] <= 6
    assert r["labels_to_target_ranked"] is None or 2 <= r["labels_to_target_ranked"] <= 6
    draw = r["draws"][0]
    for order in ("ranked", "random"):
        picked = draw[f"{order}_labeled"]
        assert len(picked) == 6 and len(set(picked)) == 6 and picked[:2] == draw["start"]
        assert all(0 <= i < 16 for i in picked)
    assert any("ranked: 6 labels" in m for m in logs)
    # registered as `dgan bench labeling-order [--quick] [--draws N]`
    assert "labeling-order" in BENCHES
    args = build_parser().parse_args(["bench", "labeling-order", "--quick", "--draws", "2", "--json"])
    assert {"quick": True, "draws": 2}.items() <= bench_kwargs(args).items()
    quick = OrderSettings.quick()
    assert quick.counts() == OrderSettings().counts() == [4, 8, 12, 16] and quick.draws >= 2


def test_bench_cache_resumes_and_a_baseline_report_spares_the_random_order(tmp_path):
    """--cache keeps every fit keyed by what it depends on (a second run trains nothing and reports the
    same curves); --baseline reuses an earlier report's random curves, after checking its settings and
    that its first fit is reproduced here."""
    from model.bench_labeling_order import OrderSettings, run_labeling_order

    s = OrderSettings(start=2, step=2, max_labels=4, draws=1, pool=12, n_test=4, steps=3, batch=2, base=4, size=32)
    first = run_labeling_order(s, log=lambda m: None, cache=tmp_path / "fits")
    assert first["fits"] == {"trained": 3, "reused_from_cache": 0, "cache": str(tmp_path / "fits")}
    assert first["random_order"] == "refitted in this run"
    again = run_labeling_order(s, log=lambda m: None, cache=tmp_path / "fits")
    assert again["fits"]["trained"] == 0 and again["fits"]["reused_from_cache"] == 3
    assert again["draws"][0]["ranked"] == first["draws"][0]["ranked"]
    assert again["draws"][0]["random"] == first["draws"][0]["random"]
    # a torn cache entry is fitted again, not trusted
    next(iter((tmp_path / "fits").glob("fit-*.pt"))).write_bytes(b"torn")
    assert run_labeling_order(s, log=lambda m: None, cache=tmp_path / "fits")["fits"]["trained"] == 1

    reused = run_labeling_order(s, log=lambda m: None, baseline={**first, "_source": "first.json"})
    assert reused["random_miou_mean"] == first["random_miou_mean"]
    assert reused["draws"][0]["random_labeled"] == first["draws"][0]["random_labeled"]
    assert reused["fits"]["trained"] == 2 and "first.json" in reused["random_order"]     # the first fit + ranked
    with pytest.raises(ValueError, match="other settings"):
        run_labeling_order(OrderSettings(**{**s.__dict__, "steps": 4}), log=lambda m: None, baseline=first)
    forged = {**first, "draws": [{**first["draws"][0], "random": {**first["draws"][0]["random"], "2": 101.0}}]}
    with pytest.raises(ValueError, match="not reproduced"):
        run_labeling_order(s, log=lambda m: None, baseline=forged)
