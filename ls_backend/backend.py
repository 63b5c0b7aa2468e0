"""The backend object: ``setup`` / ``predict`` / ``fit`` over the model/ pipeline.

One instance per process, created lazily (never at import). The generator and encoder are loaded on
first use and kept; a project's interpreter is reloaded only when a newer version lands on disk.
No tensor math here beyond calling model/.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from PIL import Image

from .brush import LabelMap, mask_to_results, parse_label_config, results_to_mask, validate_results
from .config import Settings
from .fetch import decode_image, fetch_image_bytes
from .fit_guard import annotations_digest, unchanged_fit
from .store import ProjectStore, image_hash, model_version_name

log = logging.getLogger(__name__)

SEED_KEYS = ("dgan_seed",)        # task data written by our synthesis push: exact latents


@dataclass
class TaskImage:
    task_id: int
    image: np.ndarray             # uint8 [H, W, 3] at the original size
    digest: str
    seed: int | None = None
    psi: float = 1.0


def parse_project_id(value) -> int:
    """Label Studio sends project as ``"<id>.<timestamp>"`` (setup/predict) or an int / dict (webhooks)."""
    if isinstance(value, dict):
        value = value.get("id")
    try:
        return int(str(value).split(".")[0])
    except (TypeError, ValueError):
        raise ValueError(f"cannot read a project id from {value!r}") from None


class Backend:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = ProjectStore(settings.model_dir, keep_versions=settings.keep_versions)
        self._lock = threading.Lock()
        self._interpreters: dict[int, tuple[int, object]] = {}

    # -- lazily loaded, cached models -----------------------------------------------------------
    @cached_property
    def generator(self):
        from model.generator.default import load_default_or

        G = load_default_or(self.settings.generator)
        log.info("loaded generator (%dpx)", G.cfg.resolution)
        return G

    @cached_property
    def generator_id(self) -> str:
        from model.generator.checkpoints import generator_id

        return generator_id(self.generator)

    @cached_property
    def encoder(self):
        from model.generator.default import load_encoder_for

        return load_encoder_for(self.generator, self.settings.encoder)

    @cached_property
    def client(self):
        from .client import LabelStudioClient

        return LabelStudioClient(self.settings.label_studio_url, self.settings.label_studio_api_key)

    def interpreter(self, project: int):
        """(version, Interpreter) of the project's latest version, or (0, None) before any fit."""
        from model.interpreter import Interpreter

        version = self.store.latest_version(project)
        with self._lock:
            cached = self._interpreters.get(project)
            if cached and cached[0] == version:
                return cached
            if version == 0:
                return 0, None
            interp = Interpreter.load(self.store.interpreter_path(project, version), generator_id=self.generator_id)
            self._interpreters[project] = (version, interp)
            return version, interp

    def model_version(self, project: int) -> str:
        return model_version_name(self.store.latest_version(project))

    # -- the Label Studio contract ---------------------------------------------------------------
    def setup(self, project: int, label_config: str | None) -> dict:
        """Cheap: validates the label config when given and reports the current model version."""
        if label_config:
            parse_label_config(label_config)
        return {"model_version": self.model_version(project)}

    def load_task_image(self, task: dict, label_map: LabelMap) -> TaskImage:
        data = task.get("data") or {}
        if label_map.image_key not in data:
            raise ValueError(f"task {task.get('id')} has no data field {label_map.image_key!r} "
                             f"(the Image tag reads ${label_map.image_key}); fields: {sorted(data)}")
        raw = fetch_image_bytes(data[label_map.image_key], self.settings.label_studio_url, self.client.auth_headers(),
                                self.settings.allowed_roots)
        img = decode_image(raw, self.settings.max_image_pixels, f"task {task.get('id')}")
        seed = next((data[k] for k in SEED_KEYS if data.get(k) is not None), None)
        gen_ok = data.get("dgan_generator_id") in (None, self.generator_id)
        return TaskImage(int(task.get("id", -1)), img, image_hash(raw), int(seed) if seed is not None and gen_ok else None,
                         float(data.get("dgan_psi", 1.0)))

    def to_generator_input(self, img: np.ndarray) -> np.ndarray:
        res = self.generator.cfg.resolution
        if img.shape[:2] == (res, res):
            return img
        return np.asarray(Image.fromarray(img).resize((res, res), Image.BILINEAR))

    def latents(self, items: list[TaskImage], steps: int | None = None) -> torch.Tensor:
        """W+ latents [N, num_ws, w_dim]: exact for our synthesized tasks, cached by image hash, else inverted
        (batched) and cached."""
        from model.inversion import images_to_tensor, invert
        from model.synthesis import latents_for_seeds

        G = self.generator
        out: list[torch.Tensor | None] = [None] * len(items)
        todo = []
        for i, it in enumerate(items):
            if it.seed is not None:
                out[i] = latents_for_seeds(G, [it.seed], it.psi)[0]
            else:
                cached = self.store.get_latent(it.digest, self.generator_id)
                if cached is not None:
                    out[i] = cached
                else:
                    todo.append(i)
        if todo:
            x = images_to_tensor(np.stack([self.to_generator_input(items[i].image) for i in todo]))
            res = invert(G, x, encoder=self.encoder, steps=self.settings.inversion_steps if steps is None else steps)
            for j, i in enumerate(todo):
                out[i] = res.ws[j]
                self.store.put_latent(items[i].digest, self.generator_id, res.ws[j], float(res.psnr_db[j]))
        return torch.stack(out)  # type: ignore[arg-type]

    def predict_items(self, project: int, items: list[TaskImage], label_map: LabelMap) -> list[dict]:
        """Prediction entries {result, score, model_version} for decoded task images."""
        from model.labeling import label_latents

        version, interp = self.interpreter(project)
        if interp is None:
            return [untrained_entry() for _ in items]
        if interp.class_names != label_map.class_names:
            raise ValueError(f"model {model_version_name(version)} was fitted for labels {interp.class_names[1:]}, "
                             f"the project now has {list(label_map.labels)}; train again (POST /api/ml/<id>/train)")
        ws = self.latents(items)
        _, pred = label_latents(self.generator, interp, ws)
        entries = []
        n_cls = len(interp.class_names)
        for it, labels, score in zip(items, pred.labels, pred.score):
            h, w = it.image.shape[:2]
            if (h, w) != labels.shape:
                labels = np.asarray(Image.fromarray(labels).resize((w, h), Image.NEAREST))
            certainty = float(np.clip(1.0 - score / np.log(n_cls), 0.0, 1.0))
            results = mask_to_results(labels, label_map)
            validate_results(results, label_map)   # Label Studio accepts anything; we do not send anything
            entries.append({"result": results, "score": round(certainty, 4),
                            "model_version": model_version_name(version)})
        return entries

    def predict(self, project: int, tasks: list[dict], label_config: str,
                budget_s: float | None = None) -> tuple[list[dict], list[int]]:
        """Entries for the tasks that fit the time budget, in order, and the ids of the tasks left over
        (to be finished by a job). A task whose image cannot be used gets an empty entry and is logged."""
        label_map = parse_label_config(label_config)
        budget = self.settings.predict_budget_s if budget_s is None else budget_s
        t0 = time.time()
        version, interp = self.interpreter(project)
        if interp is None:   # nothing to predict with: say so at once, without fetching any image
            return [untrained_entry() for _ in tasks], []
        entries: list[dict] = []
        leftover: list[int] = []
        batch = 8
        per_task = None
        for start in range(0, len(tasks), batch):
            chunk = tasks[start:start + batch]
            elapsed = time.time() - t0
            if per_task is not None and elapsed + per_task * len(chunk) > budget:
                leftover = [int(t["id"]) for t in tasks[start:]]
                break
            items, bad = [], {}
            for t in chunk:
                try:
                    items.append(self.load_task_image(t, label_map))
                except ValueError as e:
                    log.warning("task %s: %s", t.get("id"), e)
                    bad[int(t.get("id", -1))] = str(e)
            done = iter(self.predict_items(project, items, label_map)) if items else iter(())
            for t in chunk:
                if int(t.get("id", -1)) in bad:
                    # No "result": Label Studio stores nothing and asks again once the image is fixed.
                    entries.append({"model_version": model_version_name(version), "error": bad[int(t.get("id", -1))]})
                else:
                    entries.append(next(done))
            per_task = (time.time() - t0) / len(entries)
        return entries, leftover

    # -- fitting (called by the worker's job) ----------------------------------------------------
    def fit(self, project: int) -> dict:
        """Fit version N+1 from the project's current annotations; returns its metadata."""
        from model.interpreter import InterpreterConfig
        from model.labeling import fit_from_latents

        t0 = time.time()
        label_config = self.client.label_config(project)
        label_map = parse_label_config(label_config)
        annotated = self.client.annotated_tasks(project)
        digest = annotations_digest(annotated, label_config, self.generator_id)
        unchanged = unchanged_fit(self.store, project, digest)
        if unchanged is not None:        # e.g. START_TRAINING with nothing new: no new version
            return unchanged
        items, masks, ids = [], [], []
        for task, annotation in annotated:
            try:
                item = self.load_task_image(task, label_map)
                mask = results_to_mask(annotation.get("result") or [], label_map, *item.image.shape[:2])
            except ValueError as e:
                log.warning("project %s task %s skipped: %s", project, task.get("id"), e)
                continue
            if not mask.any():
                log.warning("project %s task %s skipped: its annotation paints no brush label", project, task.get("id"))
                continue
            if mask.shape != item.image.shape[:2]:
                log.warning("task %s: mask %s does not match image %s; skipped", task["id"], mask.shape, item.image.shape)
                continue
            res = self.generator.cfg.resolution
            if mask.shape != (res, res):
                mask = np.asarray(Image.fromarray(mask).resize((res, res), Image.NEAREST))
            items.append(item)
            masks.append(mask)
            ids.append({"task": item.task_id, "annotation": annotation.get("id")})
        if not items:
            raise ValueError(f"project {project} has no usable brush annotations yet; annotate at least one task")
        ws = self.latents(items)
        masks_np = np.stack(masks)
        cfg = InterpreterConfig(in_dim=0, n_classes=len(label_map.class_names))
        cv = cross_validated_miou(self.generator, ws, masks_np, label_map.class_names) if len(items) >= 4 else None
        interp = fit_from_latents(self.generator, ws, masks_np, label_map.class_names, cfg)
        version, path = self.store.next_version_paths(project)
        interp.save(path)
        meta = {"model_version": model_version_name(version), "trained_on": ids, "n_images": len(items),
                "cv_miou": cv, "fit_seconds": round(time.time() - t0, 2), "generator_id": self.generator_id,
                "labels": list(label_map.labels), "annotations_digest": digest}
        self.store.commit_version(project, version, meta)
        return meta


def untrained_entry() -> dict:
    """What a task gets before the first fit: an empty result under a version that says untrained."""
    return {"result": [], "score": 0.0, "model_version": model_version_name(0)}


def cross_validated_miou(G, ws: torch.Tensor, masks: np.ndarray, class_names: list[str], folds: int = 4) -> float:
    """k-fold mIoU (%) of a lighter interpreter (3 members, half the training) on the annotated images
    themselves: a quick, slightly pessimistic estimate of the fitted model's quality."""
    from model.interpreter import InterpreterConfig
    from model.labeling import fit_from_latents, label_latents
    from model.metrics import mean_iou

    n = len(ws)
    order = np.arange(n)
    preds = np.zeros_like(masks)
    for k in range(min(folds, n)):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        cfg = InterpreterConfig(in_dim=0, n_classes=len(class_names), members=3, epochs=6)
        interp = fit_from_latents(G, ws[train], masks[train], class_names, cfg, seed=k)
        preds[test] = label_latents(G, interp, ws[test])[1].labels
    return round(100 * mean_iou(preds, masks, len(class_names)), 2)
