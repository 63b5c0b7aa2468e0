"""The backend object: ``setup`` / ``predict`` / ``fit`` / ``train_segmenter`` over :class:`model.pipeline.Pipeline`.

One instance per process, created lazily (never at import). The pipeline (generator, encoder) is
loaded on first use and kept; a project's models are reloaded only when a newer version lands on disk.

What answers ``/predict`` for a project: its newest ready segmenter (a U-Net trained after a fit on the
labeled images and a synthesized pool; no inversion, milliseconds per task; model_version
``dgan-vN-segmenter``), else its newest interpreter through inversion (``dgan-vN``), else — before the
first fit, when the label config has a foreground label (:mod:`ls_backend.foreground`) and the generator
has an alpha-net — Labels4Free's zero-label foreground mask through inversion (``dgan-foreground``),
else nothing yet (``dgan-untrained``). Label Studio I/O and the project store live here; every tensor lives in model/.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
import torch

from .brush import LabelMap, mask_to_results, parse_label_config, results_to_mask, validate_results
from .client import LabelStudioError
from .config import Settings
from .fetch import fetch_task_image
from .fit_guard import annotations_digest, unchanged_fit
from .foreground import foreground_label
from .store import ProjectStore, image_hash, model_version_name

log = logging.getLogger(__name__)

SEED_KEYS = ("dgan_seed",)        # task data written by our synthesis push: exact latents
FOREGROUND_VERSION = "dgan-foreground"   # model_version of zero-label foreground predictions


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


PREDICT_BATCH = 8    # tasks labeled together by /predict (one batched inversion)
NEW_TASK_ESTIMATE_TTL_S = 600.0   # a measured cost per inverted task is trusted this long


class Backend:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = ProjectStore(settings.model_dir, keep_versions=settings.keep_versions)
        self._lock = threading.Lock()
        self._interpreters: dict[int, tuple[int, object]] = {}
        self._segmenters: dict[int, tuple[int, object]] = {}
        self._refiners: dict[str, object] = {}
        self._labeled: dict[tuple, np.ndarray | None] = {}   # labeled_embeddings per (project, version, kind)
        self._new_task_s: float | None = None   # measured seconds per task that needed an inversion
        self._new_task_at = 0.0                   # ... when (time.time())
        self._cheap_task_s = 0.0                  # ... per task that did not (latent known, or a segmenter)

    # -- lazily loaded, cached models -----------------------------------------------------------
    @cached_property
    def pipeline(self):
        from model.pipeline import Pipeline

        pipe = Pipeline.load(self.settings.generator, self.settings.encoder, self.settings.inversion_steps,
                             device=self.settings.device)
        log.info("loaded generator (%dpx) on %s", pipe.resolution, pipe.device)
        return pipe

    @property
    def generator(self):
        return self.pipeline.G

    @cached_property
    def fgbg(self):
        """The generator's Labels4Free alpha-net (``DGAN_FGBG``, else the shipped one when it belongs to the
        generator), or None: no zero-label foreground then."""
        from model.generator.default import load_fgbg_for

        model = load_fgbg_for(self.generator, self.settings.fgbg)
        if model is None:
            log.info("no alpha-net for generator %s: no zero-label foreground predictions (train one with "
                     "`dgan train-fgbg --generator G.pt --out fgbg.pt` and set DGAN_FGBG)", self.generator_id)
        return model

    def foreground(self, label_config: str, label_map: LabelMap) -> str | None:
        """The label zero-label foreground predictions paint for this config, or None when there is none (no
        foreground label, or no alpha-net for the generator). A DGAN_FOREGROUND_LABEL the config does not have
        raises :class:`~ls_backend.brush.LabelConfigError`."""
        label = foreground_label(label_config, label_map, self.settings.foreground_label)
        return label if label is not None and self.fgbg is not None else None

    @property
    def generator_id(self) -> str:
        return self.pipeline.generator_id

    @cached_property
    def client(self):
        from .client import LabelStudioClient

        return LabelStudioClient(self.settings.label_studio_url, self.settings.label_studio_api_key)

    def interpreter(self, project: int):
        """(version, label source) of the project's latest version — its interpreter, or its label branch
        when that cross-validated better (DGAN_LABEL_SOURCE) — or (0, None) before any fit."""
        from model.pipeline import load_label_source

        return self._cached(self._interpreters, project, self.store.latest_version(project),
                            lambda v: load_label_source(self.store.interpreter_path(project, v),
                                                        generator_id=self.generator_id))

    def segmenter(self, project: int):
        """(version, Segmenter) of the project's newest ready segmenter, or (0, None) while none is."""
        from model.segmenter import Segmenter

        return self._cached(self._segmenters, project, self.store.latest_segmenter(project),
                            lambda v: Segmenter.load(self.store.segmenter_path(project, v),
                                                     generator_id=self.generator_id).to(self.pipeline.device))

    def refiner_file(self, project: int) -> str:
        """The project's newest refiner (trained by the segmenter job when its images drifted), for
        ``dgan push --refine``; a clear error when it has none."""
        version = self.store.latest_refiner(project)
        if not version:
            seg_version = self.store.latest_segmenter(project)
            drift = (self.store.version_meta(project, seg_version).get("segmenter", {}).get("drift")
                     if seg_version else None)
            why = (f"its images did not drift from the generator's (drift {drift['ratio']}× the floor, threshold 3)"
                   if drift else "its segmenter has not measured drift yet (train it, with DGAN_REFINE=auto)")
            raise ValueError(f"project {project} has no refiner: {why}. Train one with `dgan refine train "
                             f"--project {project} --out refiner.pt` and pass --refiner refiner.pt, or push without "
                             "--refine")
        return str(self.store.refiner_path(project, version))

    def load_refiner(self, path: str):
        """A refiner file (cached by path), checked against this generator, on the pipeline's device."""
        from model.refiner import Refiner

        with self._lock:
            if path not in self._refiners:
                self._refiners[path] = Refiner.load(path, generator_id=self.generator_id).to(self.pipeline.device)
            return self._refiners[path]

    def _cached(self, cache: dict, project: int, version: int, load):
        """(version, model) from ``cache``, loading version ``version`` when it is newer; (0, None) for 0."""
        with self._lock:
            hit = cache.get(project)
            if hit and hit[0] == version:
                return hit
            if version == 0:
                return 0, None
            cache[project] = (version, load(version))
            return cache[project]

    def model_version(self, project: int, foreground: bool = False) -> str:
        """The name predictions for ``project`` carry now; ``foreground``: the config has a foreground label
        the generator's alpha-net can paint (what answers before the first fit)."""
        seg_version = self.store.latest_segmenter(project)
        if seg_version:
            return segmenter_version_name(seg_version)
        version = self.store.latest_version(project)
        return FOREGROUND_VERSION if version == 0 and foreground else model_version_name(version)

    def queued_version(self, project: int, label_config: str) -> str:
        """The model version the tasks :meth:`predict` left to the job will be predicted with."""
        untrained = self.store.latest_version(project) == 0 and self.store.latest_segmenter(project) == 0
        foreground = untrained and self.foreground(label_config, parse_label_config(label_config)) is not None
        return self.model_version(project, foreground)

    # -- the Label Studio contract ---------------------------------------------------------------
    def setup(self, project: int, label_config: str | None) -> dict:
        """Cheap: validates the label config when given and reports the current model version."""
        foreground = False
        if label_config:
            label_map = parse_label_config(label_config)
            foreground = self.foreground(label_config, label_map) is not None
        return {"model_version": self.model_version(project, foreground)}

    def load_task_image(self, task: dict, label_map: LabelMap) -> TaskImage:
        img, raw = fetch_task_image(task, label_map.image_key, self.settings, self.client.auth_headers())
        data = task.get("data") or {}
        seed = next((data[k] for k in SEED_KEYS if data.get(k) is not None), None)
        gen_ok = data.get("dgan_generator_id") in (None, self.generator_id)
        return TaskImage(int(task.get("id", -1)), img, image_hash(raw), int(seed) if seed is not None and gen_ok else None,
                         float(data.get("dgan_psi", 1.0)))

    def latents(self, items: list[TaskImage], steps: int | None = None) -> torch.Tensor:
        """W+ latents [N, num_ws, w_dim]: exact for our synthesized tasks, cached by image hash, else inverted
        (batched) and cached."""
        pipe = self.pipeline
        out: list[torch.Tensor | None] = [None] * len(items)
        todo = []
        for i, it in enumerate(items):
            if it.seed is not None:
                out[i] = pipe.seed_latents([it.seed], it.psi)[0]
            else:
                cached = self.store.get_latent(it.digest, self.generator_id)
                if cached is not None:
                    out[i] = cached
                else:
                    todo.append(i)
        if todo:
            ws, psnr = pipe.invert(np.stack([pipe.to_resolution(items[i].image) for i in todo]), steps)
            for j, i in enumerate(todo):
                out[i] = ws[j]
                self.store.put_latent(items[i].digest, self.generator_id, ws[j], float(psnr[j]))
        return torch.stack(out)  # type: ignore[arg-type]

    def predict_items(self, project: int, items: list[TaskImage], label_map: LabelMap,
                      foreground: str | None = None) -> list[dict]:
        """Prediction entries {result, score, model_version} for decoded task images: by the newest ready
        segmenter whose labels match the config, else by the newest interpreter through inversion, else
        (``foreground``: the config's foreground label) by the zero-label foreground. ``score`` ranks the
        value of labeling the task (model.labeling_order): ascending = label first."""
        from model.labeling_order import labeling_score, novelty

        scored = self.score_items(project, items, label_map)
        if scored is None:
            if foreground is not None and self.fgbg is not None:
                return self.foreground_entries(items, label_map, foreground)
            return [untrained_entry() for _ in items]
        name, pred, cert, emb, labeled = scored
        scores = labeling_score(cert, novelty(emb, labeled) if labeled is not None else None)
        entries = []
        for it, labels, score in zip(items, pred.labels, scores):
            labels = self.pipeline.masks_to_size(labels, *it.image.shape[:2])
            results = mask_to_results(labels, label_map)
            validate_results(results, label_map)   # Label Studio accepts anything; we do not send anything
            entries.append({"result": results, "score": round(float(score), 4), "model_version": name})
        return entries

    def foreground_entries(self, items: list[TaskImage], label_map: LabelMap, label: str) -> list[dict]:
        """Zero-label entries: Labels4Free's foreground mask of each image (its latent: exact for our synthesized
        tasks, cached, else inverted) painted as ``label``; ``score`` is the mask's certainty."""
        labels, cert = self.pipeline.foreground_labels(self.fgbg, self.latents(items),
                                                       label_map.class_id(label, _control_of(label, label_map)))
        entries = []
        for it, lab, c in zip(items, labels, cert):
            results = mask_to_results(self.pipeline.masks_to_size(lab, *it.image.shape[:2]), label_map)
            validate_results(results, label_map)
            entries.append({"result": results, "score": round(float(c), 4), "model_version": FOREGROUND_VERSION})
        return entries

    def score_items(self, project: int, items: list[TaskImage], label_map: LabelMap):
        """What the labeling order is computed from (model.labeling_order), or None before the first fit:
        (model_version, Prediction, certainty float64 [N] in [0, 1], the items' embeddings [N, D] and the
        labeled images' [M, D] in the serving model's space — both None when novelty is not measured)."""
        from model.labeling_order import image_embeddings, latent_embeddings

        pipe = self.pipeline
        seg_version, seg = self.segmenter(project)
        if seg is not None and seg.class_names == label_map.class_names:
            images = np.stack([pipe.to_resolution(it.image) for it in items])
            pred = seg.label(images)
            name = segmenter_version_name(seg_version)
            labeled = self.labeled_embeddings(project, seg_version, seg)
            emb = image_embeddings(seg.model, images) if labeled is not None else None
        else:
            version, interp = self.interpreter(project)
            if interp is None:
                return None
            if interp.class_names != label_map.class_names:
                raise ValueError(f"model {model_version_name(version)} was fitted for labels {interp.class_names[1:]}, "
                                 f"the project now has {list(label_map.labels)}; train again (POST /api/ml/<id>/train)")
            ws = self.latents(items)
            pred = pipe.label(interp, ws)[1]
            name = model_version_name(version)
            labeled = self.labeled_embeddings(project, version)
            emb = latent_embeddings(ws) if labeled is not None else None
        n_cls = len(label_map.class_names)
        cert = np.array([pipe.certainty(float(s), n_cls) for s in pred.score], np.float64)
        return name, pred, cert, emb, labeled

    def labeled_embeddings(self, project: int, version: int, seg=None) -> np.ndarray | None:
        """Version N's labeled images [M, D] in the serving model's space: the segmenter's features
        (``seg`` given) of the images kept beside the version, or their W+ latents (kept by fits since the
        labeling order) for the interpreter. None when fewer than 2, or not on disk: no novelty then."""
        from model.labeling_order import MIN_LABELED, image_embeddings, latent_embeddings

        key = (project, version, seg is not None)
        if key in self._labeled:
            return self._labeled[key]
        path = self.store.training_data_path(project, version)
        if not path.exists():
            return None
        with np.load(path) as data:
            if seg is not None:
                ref = image_embeddings(seg.model, data["images"])
            else:   # versions fitted before the labeling order kept no latents: no novelty for them
                ref = latent_embeddings(data["ws"]) if "ws" in data.files else None
        if ref is not None and len(ref) < MIN_LABELED:
            ref = None
        self._labeled[key] = ref
        return ref

    def segmenter_serves(self, project: int, label_map: LabelMap) -> bool:
        """Whether the project's predictions come from its ready segmenter (no inversion needed)."""
        _, seg = self.segmenter(project)
        return seg is not None and seg.class_names == label_map.class_names

    def needs_inversion(self, item: TaskImage) -> bool:
        """Whether predicting ``item`` inverts its image (no exact latent, none cached)."""
        return item.seed is None and self.store.get_latent(item.digest, self.generator_id) is None

    def new_task_seconds(self) -> float:
        """Seconds a task needing an inversion is expected to take: the last measured figure, else (none
        yet, or older than ``NEW_TASK_ESTIMATE_TTL_S``, so one slow batch — a fit sharing the CPU — does not
        queue every new image for the rest of the process) the pipeline's inversion timing, measured anew."""
        if self._new_task_s is not None and time.time() - self._new_task_at < NEW_TASK_ESTIMATE_TTL_S:
            return self._new_task_s
        stale = self._new_task_s is not None
        self._new_task_s, self._new_task_at = self.pipeline.invert_seconds_per_image(remeasure=stale), time.time()
        return self._new_task_s

    def predict(self, project: int, tasks: list[dict], label_config: str,
                budget_s: float | None = None) -> tuple[list[dict], list[int]]:
        """Entries for the tasks that fit the time budget, in order, and the ids of the tasks left over
        (to be finished by a job). A task is answered now only when its expected cost (an inversion for a
        new image, :meth:`new_task_seconds`; little for a known latent or a ready segmenter) still fits the
        budget, so a request returns within it even when one inversion would not (a large generator on a
        CPU): then every task is left to the job. A task whose image cannot be used gets an empty entry and
        is logged."""
        label_map = parse_label_config(label_config)
        budget = self.settings.predict_budget_s if budget_s is None else budget_s
        t0 = time.time()
        version, interp = self.interpreter(project)
        untrained = interp is None and self.store.latest_segmenter(project) == 0
        foreground = self.foreground(label_config, label_map) if untrained else None
        if untrained and foreground is None:
            # nothing to predict with: say so at once, without fetching any image
            return [untrained_entry() for _ in tasks], []
        # What a task costs: inverting a new image dominates (minutes per image at 256 px on a CPU);
        # a cached or exact latent, or a ready segmenter, costs little. Only what fits is answered now.
        inverting = not self.segmenter_serves(project, label_map)
        entries: list[dict] = []
        leftover: list[int] = []
        start = 0
        # Images fetched but not taken (over the budget) are carried to the next round, not fetched again:
        # a second fetch costs time and counts twice against the request's pixel budget.
        loaded: list[tuple[dict, TaskImage | None, str | None]] = []
        while start < len(tasks):
            for t in tasks[start + len(loaded):start + PREDICT_BATCH]:
                try:
                    loaded.append((t, self.load_task_image(t, label_map), None))
                except ValueError as e:
                    log.warning("task %s: %s", t.get("id"), e)
                    loaded.append((t, None, str(e)))
            new = [inverting and it is not None and self.needs_inversion(it) for _, it, _ in loaded]
            remaining = budget - (time.time() - t0)
            if math.isinf(budget):      # the job: no deadline (and no one-off inversion estimate to measure)
                take = len(new)
            else:
                take, cost = 0, 0.0
                for is_new in new:
                    cost += self.new_task_seconds() if is_new else self._cheap_task_s
                    if cost > remaining:
                        break
                    take += 1
            if take == 0:
                leftover = [int(t["id"]) for t in tasks[start:]]
                break
            batch, loaded, n_new = loaded[:take], loaded[take:], sum(new[:take])
            t1 = time.time()
            items = [it for _, it, _ in batch if it is not None]
            done = iter(self.predict_items(project, items, label_map, foreground)) if items else iter(())
            for t, it, err in batch:
                if it is None:
                    # No "result": Label Studio stores nothing and asks again once the image is fixed.
                    entries.append({"model_version": self.model_version(project, foreground is not None),
                                    "error": err})
                else:
                    entries.append(next(done))
            took = time.time() - t1
            if n_new:
                self._new_task_s, self._new_task_at = took / n_new, time.time()   # the next request plans with it
            else:
                self._cheap_task_s = took / take
            start += take
        return entries, leftover

    # -- fitting (called by the worker's job) ----------------------------------------------------
    def fit(self, project: int) -> dict:
        """Fit version N+1 from the project's current annotations; returns its metadata. The labeled
        images are kept beside it for :meth:`train_segmenter` (queued by the worker after the fit)."""
        from model.pipeline import fit_label_source

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
                log.warning("project %s task %s skipped: its annotation paints no brush or polygon label", project,
                            task.get("id"))
                continue
            if mask.shape != item.image.shape[:2]:
                log.warning("task %s: mask %s does not match image %s; skipped", task["id"], mask.shape, item.image.shape)
                continue
            items.append(item)
            masks.append(self.pipeline.masks_to_resolution(mask))
            ids.append({"task": item.task_id, "annotation": annotation.get("id")})
        if not items:
            raise ValueError(f"project {project} has no usable brush or polygon annotations yet; annotate at least "
                             "one task")
        pipe = self.pipeline
        ws = self.latents(items)
        masks_np = np.stack(masks)
        classes = label_map.class_names
        images = np.stack([pipe.to_resolution(it.image) for it in items])
        source, cv = self.choose_label_source(ws, masks_np, classes, images)
        model = fit_label_source(pipe, source, ws, masks_np, classes, images)
        version, path = self.store.next_version_paths(project)
        model.save(path)
        np.savez_compressed(self.store.training_data_path(project, version), images=images, masks=masks_np,
                            ws=ws.numpy())   # ws: the labeling order's reference for the interpreter
        chosen = cv.get(source)
        meta = {"version": version, "model_version": model_version_name(version), "trained_on": ids, "n_images": len(items),
                "label_source": source, "cv_miou": chosen.miou if chosen else None,
                "cv_per_class": chosen.per_class if chosen else None,
                "cv_by_label_source": {k: v.to_dict() for k, v in cv.items()},
                "fit_seconds": round(time.time() - t0, 2), "generator_id": self.generator_id,
                "labels": list(label_map.labels), "annotations_digest": digest}
        self.store.commit_version(project, version, meta)
        return meta

    def choose_label_source(self, ws: torch.Tensor, masks: np.ndarray, classes: list[str],
                            images: np.ndarray) -> tuple[str, dict]:
        """(the label source to fit, {source: CrossValidation}). DGAN_LABEL_SOURCE=auto cross-validates
        the interpreter and the label branch and takes the better; otherwise the named one (its
        cross-validation reported when there are ≥ 4 labeled images)."""
        wanted = self.settings.label_source
        candidates = ("interpreter", "label-branch") if wanted == "auto" else (wanted,)
        if len(ws) < 4:
            return candidates[0], {}
        cv = {c: self.pipeline.cross_validate(ws, masks, classes, source=c, images=images) for c in candidates}
        return max(cv, key=lambda c: cv[c].miou), cv

    def train_segmenter(self, project: int, version: int, should_stop=None) -> dict:
        """Train the segmenter of fitted version N from the images it was fitted on (minutes; no lock
        needed: it writes only its own file). Skipped when a newer version exists (its own job trains it)
        or when the segmenter is already there; stopped, without writing anything, as soon as
        ``should_stop()`` answers True (the worker's job asks whether a fit is waiting). Returns a summary."""
        from model.pipeline import SegmenterRecipe
        from model.segmenter import TrainingStopped

        name = segmenter_version_name(version)
        if self.store.latest_version(project) > version:
            return {"model_version": name, "skipped": "a newer version exists; its own job trains its segmenter"}
        path = self.store.segmenter_path(project, version)
        if path.exists():
            return {"model_version": name, "skipped": "already trained"}
        data_path = self.store.training_data_path(project, version)
        if not data_path.exists():
            return {"model_version": name, "skipped": f"no training data for {model_version_name(version)} "
                                                      "(pruned, or fitted before segmenters existed)"}
        with np.load(data_path) as data:
            images, masks = data["images"], data["masks"]
        classes = self.store.version_meta(project, version).get("labels")
        class_names = ["background", *classes] if classes is not None else None
        if class_names is None:
            _, interp = self.interpreter(project)
            class_names = interp.class_names
        recipe = SegmenterRecipe.quick() if self.settings.segmenter_recipe == "quick" else SegmenterRecipe()
        recipe = replace(recipe, refine=self.settings.refine)
        unlabeled = self.project_images(project, self.settings.drift_images) if recipe.refine != "never" else None
        try:
            seg = self.pipeline.train_segmenter(images, masks, class_names, recipe, seed=version,
                                                log=lambda m: log.info("project %s %s: %s", project, name, m),
                                                should_stop=should_stop, unlabeled=unlabeled,
                                                refiner_state=self.store.refiner_state_path(project, version))
        except TrainingStopped as e:
            return {"model_version": name, "stopped": f"a fit is waiting ({e})"}
        seg.meta.update({"model_version": name, "trained_after": model_version_name(version)})
        if seg.refiner is not None:
            seg.refiner.save(self.store.refiner_path(project, version))
        seg.save(path)
        summary = {"model_version": name, "seconds": seg.meta["seconds"], "n_real": seg.meta["n_real"]}
        for key in ("drift", "refiner"):
            if key in seg.meta:
                summary[key] = seg.meta[key]
        # the fit report (/versions, the version's .json) gains what the segmenter measured
        self.store.update_version_meta(project, version, {"segmenter": {k: v for k, v in summary.items()
                                                                        if k != "model_version"}})
        return summary

    def project_images(self, project: int, limit: int) -> np.ndarray | None:
        """A seeded random sample (seed: the project id) of up to ``limit`` of the project's own task
        images (pushed synthetic tasks left out) at the generator's resolution, uint8 [N, R, R, 3]: every
        task is listed, only the sampled ones are decoded. None when there are none or Label Studio cannot
        be read (drift is then not measured; the segmenter trains as usual). Unreadable images are left
        out and logged."""
        if limit <= 0:
            return None
        rng = np.random.default_rng(project)
        sample: list[dict] = []
        try:
            label_map = parse_label_config(self.client.label_config(project))
            seen = 0
            for task in self.client.iter_tasks(project):   # reservoir sampling: uniform over all tasks
                data = task.get("data") or {}
                if any(data.get(k) is not None for k in SEED_KEYS):
                    continue
                seen += 1
                if len(sample) < limit:
                    sample.append(task)
                else:
                    j = int(rng.integers(seen))
                    if j < limit:
                        sample[j] = task
        except LabelStudioError as e:
            log.warning("project %s: task images not read, drift not measured (%s)", project, e)
            return None
        out: list[np.ndarray] = []
        for task in sample:
            try:
                out.append(self.pipeline.to_resolution(self.load_task_image(task, label_map).image))
            except ValueError as e:
                log.info("project %s task %s left out of the drift measurement: %s",
                         project, task.get("id"), e)
        return np.stack(out) if out else None


def _control_of(label: str, label_map: LabelMap) -> str:
    """The control a label is painted with: the BrushLabels when it offers it, else the PolygonLabels."""
    return "BrushLabels" if label in label_map.brush_label_set else "PolygonLabels"


def untrained_entry() -> dict:
    """What a task gets before the first fit: an empty result under a version that says untrained."""
    return {"result": [], "score": 0.0, "model_version": model_version_name(0)}


def segmenter_version_name(version: int) -> str:
    """model_version of predictions by the segmenter trained after fit N."""
    return f"{model_version_name(version)}-segmenter"
