"""A PolygonLabels project against a real Label Studio 1.23.2: polygon annotations (with holes and several
parts) are stored by Label Studio, read back by the fit as the exact label maps, exported losslessly, and
predictions and pushed tasks come back as polygons."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests

from ls_backend.brush import mask_to_results, parse_label_config, results_to_mask, validate_results
from ls_backend.labelstudio import wait_for
from model.domain import CLASSES, render_batch
from model.images import png_data_uri
from model.metrics import mean_iou

from .conftest import KEYS

pytestmark = pytest.mark.slow

PROJECT_LABELS = ["Mouth", "Eye", "Hair", "Face", "Torso", "Ear", "Pupil", "Brow", "Nose"]
DOMAIN_NAME = {"Mouth": "mouth", "Eye": "eye", "Hair": "hair", "Face": "face", "Torso": "torso", "Ear": "ear",
               "Pupil": "pupil", "Brow": "eyebrow", "Nose": "nose"}
CONFIG = ('<View><Image name="photo" value="$img"/><PolygonLabels name="outline" toName="photo">'
          + "".join(f'<Label value="{n}"/>' for n in PROJECT_LABELS) + "</PolygonLabels></View>")
N_TASKS, N_ANNOTATED = 16, 8        # the 8 left are answered in Label Studio's one /predict call
TO_PROJECT = np.array([0] + [PROJECT_LABELS.index(next(k for k, v in DOMAIN_NAME.items() if v == c)) + 1
                             for c in CLASSES[1:]], np.uint8)     # domain class id → project class id


def test_polygon_project(label_studio, backend, redis_conn, tmp_path):
    s = requests.Session()
    s.headers["Authorization"] = f"Token {label_studio.token}"
    api = label_studio.url + "/api"
    lm = parse_label_config(CONFIG)
    project = s.post(f"{api}/projects", json={"title": "dgan polygons e2e", "label_config": CONFIG}).json()["id"]
    images, domain_masks = render_batch(N_TASKS, seed=91)
    masks = TO_PROJECT[domain_masks]                                   # label maps in the project's class ids
    r = s.post(f"{api}/projects/{project}/import", json=[{"img": png_data_uri(im)} for im in images])
    assert r.status_code == 201, r.text
    listed = s.get(f"{api}/tasks", params={"project": project, "page_size": 100}).json()["tasks"]
    task_ids = sorted(t["id"] for t in listed)
    ml = s.post(f"{api}/ml", json={"url": backend.url, "project": project, "title": "dgan", "is_interactive": False})
    assert ml.status_code == 201, ml.text

    # Annotate with polygons: the exact masks traced (eyes have pupil holes, hair and clutter several parts).
    sent = {}
    for i in range(N_ANNOTATED):
        result = mask_to_results(masks[i], lm)
        assert {r["type"] for r in result} == {"polygonlabels"}
        r = s.post(f"{api}/tasks/{task_ids[i]}/annotations", json={"result": result})
        assert r.status_code == 201, r.text
        sent[task_ids[i]] = result
    stored = s.get(f"{api}/tasks/{task_ids[0]}/annotations").json()[0]["result"]
    assert np.array_equal(results_to_mask(stored, lm), masks[0])       # Label Studio keeps them as sent

    def version() -> int:
        v = requests.post(backend.url + "/setup", json={"project": f"{project}.1", "schema": CONFIG}).json()
        m = re.match(r"dgan-v(\d+)", v["model_version"])
        return int(m.group(1)) if m else 0

    wait_for(version, 600, "a first model version from the polygon annotations")
    # The first fit may have started before the last annotation: wait for the fits of all their webhooks.
    wait_for(lambda: int(redis_conn.get(KEYS.fitted_seq(project)) or 0)
             >= int(redis_conn.get(KEYS.event_seq(project)) or 0), 900, "the fits of the annotation webhooks")
    # The latest fit read the polygon annotations as exactly the label maps they were traced from.
    folder = Path(backend.env["MODEL_DIR"]) / "projects" / str(project) / "interpreters"
    train = sorted(folder.glob("v*.train.npz"))[-1]
    meta = json.loads(train.with_name(train.name.replace(".train.npz", ".json")).read_text())
    with np.load(train) as data:
        trained = data["masks"]
    assert len(trained) == N_ANNOTATED
    for entry, mask in zip(meta["trained_on"], trained):
        assert np.array_equal(mask, masks[task_ids.index(entry["task"])])

    # Retrieve predictions (one /predict call): polygons for every task, valid for the config.
    rest = task_ids[N_ANNOTATED:]
    r = s.post(f"{api}/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project},
               json={"selectedItems": {"all": False, "included": rest}})
    assert r.status_code == 200, r.text

    def predictions() -> dict[int, dict] | None:
        got = {}
        listed = s.get(f"{api}/tasks", params={"project": project, "page_size": 100, "fields": "all"}).json()["tasks"]
        for task in listed:
            preds = [p for p in task.get("predictions", []) if p.get("result")]
            if preds:
                got[task["id"]] = max(preds, key=lambda p: p["id"])
        return got if all(i in got for i in rest) else None

    got = wait_for(predictions, 600, "polygon predictions for every task", every=5)
    for i in rest:
        result = got[i]["result"]
        assert {r["type"] for r in result} == {"polygonlabels"}
        assert {(r["from_name"], r["to_name"]) for r in result} == {("outline", "photo")}
        validate_results(result, lm)
    pred = np.stack([results_to_mask(got[i]["result"], lm, 64, 64) for i in rest])
    miou = 100 * mean_iou(pred, masks[N_ANNOTATED:], len(PROJECT_LABELS) + 1)
    print(f"\npolygon pre-annotation mIoU on {len(rest)} tasks: {miou:.1f}%")
    assert miou > 20, miou

    # Push: synthesized tasks arrive with polygon predictions.
    out = subprocess.run([sys.executable, "-m", "ls_backend.cli", "push", "--project", str(project), "--n", "10",
                          "--chunk", "12"], env=backend.env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    tasks = s.get(f"{api}/tasks", params={"project": project, "page_size": 100, "fields": "all"}).json()["tasks"]
    pushed = [t for t in tasks if "dgan_seed" in t["data"]]
    assert len(pushed) == 10
    for t in pushed:
        result = t["predictions"][0]["result"]
        assert result and {r["type"] for r in result} == {"polygonlabels"}
        validate_results(result, lm)

    # Export: the polygon annotations come back as the exact masks (COCO RLE).
    out = subprocess.run([sys.executable, "-m", "ls_backend.cli", "export", "--project", str(project), "--format",
                          "coco", "--out", str(tmp_path / "coco")], env=backend.env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    from pycocotools.coco import COCO

    coco = COCO(str(tmp_path / "coco" / "annotations.json"))
    by_task = {im["task_id"]: im["id"] for im in coco.dataset["images"]}
    for i in range(N_ANNOTATED):
        rebuilt = np.zeros((64, 64), np.uint8)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[by_task[task_ids[i]]])):
            rebuilt[coco.annToMask(ann) > 0] = ann["category_id"]
        assert np.array_equal(rebuilt, masks[i])
