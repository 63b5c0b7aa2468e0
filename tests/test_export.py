import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from ls_backend.cli import main
from ls_backend.export import Record, voc_palette, write
from model.domain.dataset import write_domain_dataset

CLASSES = ["ring", "speck", "block"]


def _records():
    yy, xx = np.mgrid[:24, :24]
    d2 = (yy - 12) ** 2 + (xx - 12) ** 2
    mask = np.zeros((24, 24), np.uint8)
    mask[(d2 <= 81) & (d2 > 16)] = 1     # a ring: its hole must survive
    mask[1, 22] = 2                      # a 1-pixel speck must survive
    mask[20:23, 2:6] = 3
    img = np.random.default_rng(0).integers(0, 255, (24, 24, 3), dtype=np.uint8)
    other = np.zeros((24, 24), np.uint8)
    other[5:9, 5:9] = 3
    return [Record("a", img, mask, {}), Record("b", img, other, {})], mask


def test_coco_rle_is_lossless(tmp_path):
    records, mask = _records()
    summary = write(records, CLASSES, tmp_path / "coco", "coco")
    assert summary == {"format": "coco", "out": str(tmp_path / "coco"), "images": 2, "annotations": 4}
    coco = COCO(str(tmp_path / "coco" / "annotations.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == CLASSES
    rebuilt = np.zeros_like(mask)
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[1])):
        m = coco.annToMask(ann)
        assert ann["area"] == int(m.sum())
        rebuilt[m > 0] = ann["category_id"]
    assert np.array_equal(rebuilt, mask)
    ring = coco.loadAnns(coco.getAnnIds(imgIds=[1], catIds=[1]))[0]
    assert coco.annToMask(ring)[12, 12] == 0                  # the hole
    assert ring["bbox"] == [3.0, 3.0, 19.0, 19.0]
    speck = coco.loadAnns(coco.getAnnIds(imgIds=[1], catIds=[2]))[0]
    assert speck["area"] == 1 and coco.annToMask(speck)[1, 22] == 1
    assert (tmp_path / "coco" / "images" / "a.png").exists()
    with pytest.raises(ValueError, match="not empty"):
        write(records, CLASSES, tmp_path / "coco", "coco")


def test_voc_tree(tmp_path):
    records, mask = _records()
    write(records, CLASSES, tmp_path / "voc", "voc")
    seg = Image.open(tmp_path / "voc" / "SegmentationClass" / "a.png")
    assert seg.mode == "P" and np.array_equal(np.asarray(seg), mask)
    assert seg.getpalette()[3:6] == list(voc_palette()[1]) == [128, 0, 0]
    assert (tmp_path / "voc" / "JPEGImages" / "a.jpg").exists()
    split = [(tmp_path / "voc/ImageSets/Segmentation" / f).read_text().split() for f in ("train.txt", "val.txt")]
    assert sorted(split[0] + split[1]) == ["a", "b"]
    assert "ring:128,0,0::" in (tmp_path / "voc" / "labelmap.txt").read_text()


def test_export_from_a_dataset_folder_cli(tmp_path, capsys):
    write_domain_dataset(tmp_path / "syn", 5, seed=0, size=32)
    assert main(["export", "--from-synthesis", str(tmp_path / "syn"), "--format", "coco",
                 "--out", str(tmp_path / "c")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == 5
    coco = COCO(str(tmp_path / "c" / "annotations.json"))
    assert len(coco.getCatIds()) == 9 and coco.loadCats(1)[0]["name"] == "face"
    assert main(["export", "--from-synthesis", str(tmp_path / "syn"), "--format", "voc",
                 "--out", str(tmp_path / "v")]) == 0
    assert main(["export", "--format", "voc", "--out", str(tmp_path / "x")]) == 2


def test_export_errors_are_one_line_and_nothing_half_written(tmp_path, capsys):
    records, _ = _records()
    target = tmp_path / "a-file"
    target.write_text("keep me")
    assert main(["export", "--from-synthesis", str(tmp_path / "nope"), "--format", "coco", "--out",
                 str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    write_domain_dataset(tmp_path / "syn", 2, seed=0, size=32)
    for out in (target, "/sys/dgan-export"):         # onto a file; into a folder nobody may write (root neither)
        assert main(["export", "--from-synthesis", str(tmp_path / "syn"), "--format", "coco", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("is a file, not a folder" in err or "cannot write the export" in err), err
    assert target.read_text() == "keep me"
    with pytest.raises(ValueError, match="is a file, not a folder"):
        write(records, CLASSES, target, "coco")
    with pytest.raises(ValueError, match="cannot write the export into /sys"):
        write(records, CLASSES, "/sys/dgan-export", "coco")      # read-only even for root

    def interrupted():
        yield records[0]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write(interrupted(), CLASSES, tmp_path / "coco", "coco")
    assert sorted(tmp_path.iterdir()) == [target, tmp_path / "syn"]      # no folder, no partial leftovers
    assert write(records, CLASSES, tmp_path / "coco", "coco")["images"] == 2     # so a rerun just works
    (tmp_path / "empty").mkdir()
    assert write(records, CLASSES, tmp_path / "empty", "voc")["images"] == 2     # an empty folder is fine


def test_project_id_zero_is_refused_not_read_as_no_project(capsys):
    for argv in (["export", "--project", "0", "--format", "coco", "--out", "x"], ["push", "--project", "-2", "--n", "5"],
                 ["export", "--project", "abc", "--format", "voc", "--out", "x"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "not a project id" in err and "Traceback" not in err


CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
          '<Label value="ring"/><Label value="block"/></BrushLabels></View>')


class FakeLabelStudio:
    """Label Studio's task listing as the client exposes it, recording what was asked."""

    def __init__(self, tasks=()):
        self.tasks, self.asked = list(tasks), []

    def label_config(self, project):
        return CONFIG

    def iter_tasks(self, project, only_annotated=False):
        self.asked.append((project, only_annotated))
        return iter([t for t in self.tasks if t.get("annotations") or not only_annotated])

    def auth_headers(self):
        return {"Authorization": "Token k"}


def _settings():
    from ls_backend.config import Settings

    return Settings.from_env({"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "k"})


def test_project_export_asks_only_for_annotated_tasks():
    from ls_backend.export import project_records

    client = FakeLabelStudio()
    for include in (False, True):
        classes, records = project_records(client, 3, _settings(), include_predictions=include)
        assert classes == ["ring", "block"] and list(records) == []
    # Reviewed data only: the annotated tasks. With predictions, every task has to be looked at.
    assert client.asked == [(3, True), (3, False)]


def _project_tasks():
    from ls_backend.brush import mask_to_results, parse_label_config
    from model.images import png_data_uri

    label_map = parse_label_config(CONFIG)
    img = np.random.default_rng(1).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    old, new, predicted = (np.zeros((20, 30), np.uint8) for _ in range(3))
    old[2:5, 2:5] = 1
    new[5:15, 10:20] = 2
    predicted[0:4, 0:30] = 1
    data = {"image": png_data_uri(img)}
    tasks = [
        {"id": 1, "data": data, "annotations": [
            {"id": 10, "updated_at": "2024-01-01", "result": mask_to_results(old, label_map)},
            {"id": 11, "updated_at": "2024-02-01", "result": mask_to_results(new, label_map)},
            {"id": 12, "updated_at": "2024-03-01", "was_cancelled": True, "result": []}]},
        {"id": 2, "data": data, "annotations": [], "predictions": [
            {"id": 20, "result": mask_to_results(predicted, label_map)}]},
    ]
    return tasks, img, new, predicted


def test_project_export_reads_images_from_label_studio_without_a_generator(tmp_path, monkeypatch, capsys):
    """`dgan export --project` needs Label Studio and the label config only: loading a generator fails here."""
    import ls_backend.client
    import model.generator.checkpoints
    import model.generator.default

    def no_generator(*_a, **_k):
        raise AssertionError("export loaded a generator")

    monkeypatch.setattr(model.generator.default, "load_default_or", no_generator)
    monkeypatch.setattr(model.generator.checkpoints, "load_generator", no_generator)
    tasks, img, new, predicted = _project_tasks()
    monkeypatch.setattr(ls_backend.client, "LabelStudioClient", lambda url, key: FakeLabelStudio(tasks))
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "k")
    for name in ("DGAN_GENERATOR", "DGAN_ENCODER", "BASIC_AUTH_USER", "BASIC_AUTH_PASS", "DGAN_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)

    assert main(["export", "--project", "3", "--format", "voc", "--out", str(tmp_path / "reviewed")]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 1           # the latest non-cancelled annotation
    assert np.array_equal(np.asarray(Image.open(tmp_path / "reviewed/SegmentationClass/task-1.png")), new)
    assert np.asarray(Image.open(tmp_path / "reviewed/JPEGImages/task-1.jpg")).shape == img.shape

    assert main(["export", "--project", "3", "--format", "coco", "--include-predictions",
                 "--out", str(tmp_path / "all")]) == 0
    coco = COCO(str(tmp_path / "all" / "annotations.json"))
    assert [i["source"] for i in coco.loadImgs(coco.getImgIds())] == ["annotation", "prediction"]
    ring = coco.loadAnns(coco.getAnnIds(imgIds=[2], catIds=[1]))[0]
    assert np.array_equal(coco.annToMask(ring), (predicted == 1).astype(np.uint8))


def test_project_export_of_a_task_without_its_image_field_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    import ls_backend.client

    tasks, *_ = _project_tasks()
    tasks[0]["data"] = {"picture": "x"}
    monkeypatch.setattr(ls_backend.client, "LabelStudioClient", lambda url, key: FakeLabelStudio(tasks))
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "k")
    assert main(["export", "--project", "3", "--format", "coco", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "task 1 has no data field 'image'" in err and "['picture']" in err, err
    assert not (tmp_path / "o").exists()
