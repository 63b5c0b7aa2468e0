"""The DatasetGAN comparison on the embedded domain, with exact ground truth (``dgan bench quality``).

Every row is scored on a held-out real test set by mIoU (%) and per-class IoU, accumulated over the
whole set (as PASCAL VOC), mean ± std over draws of the 16 labeled images; each row also states its
difference from the same draw's few-shot U-Net. Every U-Net row uses one recipe
(:func:`model.segmenter.train_segmenter`: √-inverse-frequency class weights, flips, shifts, colour
jitter, one-cycle AdamW, flip test-time augmentation) with the steps stated in the settings.

Rows:
- ``unet_16_real``           the few-shot baseline: a U-Net on the 16 labeled real images;
- ``served_pre_annotator``   what ``/predict`` serves once a project's segmenter is ready
                             (:meth:`Pipeline.train_segmenter`: the few-shot U-Net as teacher of a pool
                             of generator samples, a student on real + pseudo-labeled synthetic);
- ``interpreter_inversion``  DatasetGAN's interpreter fitted on the 16 images paired with their inverted
                             latents, applied to each test image through inversion (what ``/predict``
                             serves before the segmenter is ready);
- ``label_branch_inversion`` SemanticGAN's label branch, fitted and applied the same way;
- ``unet_synthetic_N``       a U-Net on N pushed synthetic images alone (labels as ``dgan push`` writes
                             them, the most doubtful 10 % dropped);
- ``unet_5000_real``         the ceiling: a U-Net on 5,000 labeled real images (one run);
- ``*_shifted``              the same models on the shifted domain variant.

Domain drift (``domain_shift``; models trained with zero shifted labels, ``n_unlabeled_shifted`` unlabeled
shifted images available, one SimGAN refiner trained on them per draw, its part colours read by the
draw's teacher; one per table for a recipe without part colours or a refiner given with ``--refiner``):
- ``served_pre_annotator_refined[_shifted]`` what ``/predict`` serves for a drifted project: the student
                             also learns from the refined copy of its pool (:mod:`model.refiner`);
                             unshifted: the check that the default domain loses nothing;
- ``unet_refined_synthetic_N_shifted``  a U-Net on N pushed synthetic images, refined (``push --refine``);
- ``interpreter_ood_inversion_shifted`` the interpreter through inversion *through the refiner*;
- ``reference_unet_16_shifted_labels_shifted``  what labeling the new domain would give: a U-Net on 16
                             labeled shifted images (the bar to approach).

Diagnostics, per draw: ``pushed_label_agreement`` (mIoU of the labels ``dgan push`` writes on a pool of
generator samples against the ceiling U-Net's labels of the same images) and
``interpreter_label_agreement`` (the same for the interpreter's labels).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .domain import CLASSES, render_batch
from .label_branch import LabelBranchConfig
from .metrics import iou_per_class
from .pipeline import Pipeline, SegmenterRecipe
from .refiner import Refiner, RefinerConfig, train_refiner
from .segmenter import Segmenter, UNet, predict, train_segmenter
from .synthesis import keep_most_certain


@dataclass
class QualitySettings:
    n_labeled: int = 16
    draws: int = 3
    n_test: int = 500
    synthetic_sizes: tuple[int, ...] = (1000, 5000)
    n_ceiling: int = 5000
    unet_steps: int = 800          # few-shot U-Net, teacher and student alike
    ceiling_steps: int = 3000      # the ceiling sees 5,000 images: more steps
    inversion_steps: int = 30
    filter_frac: float = 0.1
    members: int = 10
    pool: int = 2000               # generator samples the served segmenter learns from
    branch_steps: int = 600        # label branch training steps
    domain_shift: bool = True      # the refiner rows (see the module docstring)
    default_rows: bool = True      # False: only what the domain-shift rows need (few-shot, served, interpreter)
    n_unlabeled_shifted: int = 5000
    refiner_steps: int = 1200
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @classmethod
    def quick(cls) -> "QualitySettings":
        return cls(draws=1, n_test=100, synthetic_sizes=(200,), n_ceiling=500, unet_steps=150, ceiling_steps=200,
                   members=5, pool=200, branch_steps=100, n_unlabeled_shifted=500, refiner_steps=150)

    def recipe(self) -> SegmenterRecipe:
        return SegmenterRecipe(teacher_steps=self.unet_steps, student_steps=self.unet_steps * 3 // 2, pool=self.pool)


def code_digest() -> str:
    """A digest of every source file of ``model/``: a table resumed across a code change would mix two
    versions of the product in one table, so a changed digest starts the table over."""
    here = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(here.rglob("*.py")):
        h.update(str(f.relative_to(here)).encode() + f.read_bytes())
    return h.hexdigest()[:16]


def _settings_dict(s: QualitySettings) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.__dict__.items()}


def _records_out(table: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Per-run records as strict JSON (a class absent from a run is NaN in memory, null on disk)."""
    return {k: [{**r, "per_class": [None if math.isnan(v) else v for v in r["per_class"]]} for r in runs]
            for k, runs in table.items()}


def _records_in(table: dict[str, list[dict]]) -> dict[str, list[dict]]:
    return {k: [{**r, "per_class": [math.nan if v is None else float(v) for v in r["per_class"]]} for r in runs]
            for k, runs in table.items()}


def made_with(s: QualitySettings, generator_id: str, device: str = "cpu", refiner: dict | None = None) -> dict:
    """What a table's figures depend on besides the seeds (``refiner``: the meta of one passed in, e.g. by
    ``--refiner``): a resumed table keeps draws only when it matches (:func:`resume_point`)."""
    import torch

    return {"settings": _settings_dict(s), "generator": generator_id, "torch": torch.__version__,
            "device": device, "code": code_digest(), "given_refiner": json.loads(json.dumps(refiner))}


class Resume(NamedTuple):
    draws: int          # finished draws kept
    why: str            # for the log
    same: bool          # the earlier table is an unfinished one of this very run: its refiners may be kept too


def resume_point(previous: dict | None, want: dict) -> Resume:
    """How many draws of ``previous`` (a report a stopped run left) this run can keep, and why: none unless
    it is unfinished, has per-run records, and was made as ``want`` (:func:`made_with`: the same settings,
    generator, torch, device, code and given refiner)."""
    if not previous:
        return Resume(0, "no earlier table", False)
    rec = previous.get("records")
    if previous.get("complete"):
        return Resume(0, "the earlier table is complete: running it again", False)
    if not rec:
        return Resume(0, "the earlier table has no per-run records (written by an older version)", False)
    have = {"settings": previous.get("settings"), **{k: rec.get(k) for k in want if k != "settings"}}
    changed = [k.replace("_", " ") for k in want if want[k] != have[k]]
    if changed:
        return Resume(0, f"the earlier table was made with another {' and '.join(changed)}: starting over", False)
    done = int(rec.get("draws_done", 0))
    return Resume(done, f"keeping the {done} draw(s) the earlier run finished", True)


def _summ(runs: list[dict], classes: list[str]) -> dict:
    """[{"miou", "per_class": [C], "diff"?}] → mean ± std of mIoU, per-class mean, difference to the baseline."""
    mious = [r["miou"] for r in runs]
    arr = np.array([r["per_class"] for r in runs], dtype=np.float64)
    seen = ~np.isnan(arr)
    per_class = np.where(seen.any(0), np.where(seen, arr, 0).sum(0) / np.maximum(seen.sum(0), 1), np.nan)
    out = {"miou_mean": round(float(np.mean(mious)), 2), "miou_std": round(float(np.std(mious)), 2),
           "runs": [round(v, 2) for v in mious],
           "per_class": {c: (None if np.isnan(v) else round(float(v), 1)) for c, v in zip(classes, per_class)}}
    diffs = [r["diff"] for r in runs if r.get("diff") is not None]
    if diffs:
        out["diff_vs_few_shot_mean"] = round(float(np.mean(diffs)), 2)
        out["diff_vs_few_shot_std"] = round(float(np.std(diffs)), 2)
    return out


REFINER_POOL_SEED = 70_000_000    # generator samples the table's refiner trains on


def table_refiner(pipe: Pipeline, s: QualitySettings, state_path: str | Path | None = None, log=print,
                  parts: UNet | None = None) -> Refiner:
    """A SimGAN refiner of a table run: the generator's samples → the look of unlabeled shifted images
    (rendered from seeds disjoint from every test and labeled set); resumable through ``state_path``. The
    finished refiner is kept beside it as ``refiner.pt`` (reused by a resumed run, or by ``--refiner``).
    ``parts``: the draw's teacher, for a refiner with part colours (the product's recipe)."""
    real, _ = render_batch(s.n_unlabeled_shifted, seed=7000 + s.seed, size=pipe.resolution, variant="shifted")
    pool = pipe.sample_images(list(range(REFINER_POOL_SEED, REFINER_POOL_SEED + s.pool)))
    recipe = SegmenterRecipe()
    done = Path(state_path).with_suffix(".pt") if state_path else None
    if done is not None and done.exists():     # a stopped table run: its refiner finished already
        kept = Refiner.load(done, pipe.generator_id)
        made = {k: kept.meta.get(k, False) for k in ("steps", "n_synthetic", "n_real", "part_colours")}
        want = {"steps": s.refiner_steps, "n_synthetic": s.pool, "n_real": s.n_unlabeled_shifted,
                "part_colours": parts is not None}
        if made == want:
            log(f"using the refiner this table trained before: {done}")
            return kept.to(pipe.device)
        log(f"{done} was trained with other settings ({made}, this run: {want}); training it again")
    cfg = RefinerConfig(steps=s.refiner_steps, self_reg=recipe.refiner_self_reg, part_colours=parts is not None)
    refiner = train_refiner(pool, real, cfg, seed=s.seed, parts=parts, generator_id=pipe.generator_id,
                            state_path=state_path, log=log, device=pipe.device)
    if done is not None:
        refiner.save(done)
    return refiner


def run_quality(pipe: Pipeline, s: QualitySettings, log=print, on_partial=None,
                refiner_state: str | Path | None = None, refiner: Refiner | None = None,
                resume: dict | None = None) -> dict:
    """Run the whole table; returns {"settings", "methods": {name: {miou_mean, miou_std, runs, per_class,
    diff_vs_few_shot_*}}, "diagnostics", "seconds", "complete", "records"}; ``records`` holds every run's
    figures and what they were made with, so a stopped run can be resumed.

    ``on_partial(report)``, if given, receives the table so far after the ceiling and after every draw
    (an hour-long run leaves its finished draws behind when it is stopped). ``refiner_state``: where the
    domain-shift refiner's training state is kept (a stopped run resumes its refiner); ``refiner``: one
    already trained on unlabeled shifted images (e.g. by ``dgan refine train``) instead of training it.
    ``resume``: the report a stopped run left (its ``on_partial``); its finished draws are kept when
    :func:`resume_point` allows (same settings, generator, torch, device, code and given refiner), and the
    run goes on from there. A resumed run trains the ceiling again (seeded; on a CPU the same model).
    ``seconds`` adds up every run's time, the set-up a resumed run repeats included."""
    t0 = time.time()
    made = made_with(s, pipe.generator_id, str(pipe.device), None if refiner is None else refiner.meta)
    start, why, _ = resume_point(resume, made)
    if resume is not None:
        log(f"resuming: {why}")
    res, classes = pipe.resolution, list(CLASSES)
    n_cls = len(classes)
    test_img, test_lab = render_batch(s.n_test, seed=1000 + s.seed, size=res)
    sh_img, sh_lab = render_batch(s.n_test, seed=1000 + s.seed, size=res, variant="shifted")
    log(f"inverting {2 * s.n_test} test images ...")
    test_ws = pipe.invert(test_img, s.inversion_steps)[0]
    sh_ws = pipe.invert(sh_img, s.inversion_steps)[0]
    sh_ws_ood, unlabeled_sh = None, None
    # The product's refiner maps part colours with the project's teacher reading the parts, so each draw
    # trains its own (after its teacher); a refiner without part colours is trained once for all draws.
    per_draw = s.domain_shift and refiner is None and s.recipe().refiner_part_colours
    if not s.domain_shift:
        refiner = None
    else:
        if refiner is None and not per_draw:
            log("training the refiner on unlabeled shifted images ...")
            refiner = table_refiner(pipe, s, refiner_state, log)
        if refiner is not None:
            log(f"refiner: {refiner.meta}")
            sh_ws_ood = pipe.invert(sh_img, s.inversion_steps, refiner=refiner)[0]
        unlabeled_sh = render_batch(min(500, s.n_unlabeled_shifted), seed=7000 + s.seed, size=res, variant="shifted")[0]
    scores: dict[str, list[dict]] = {}
    diagnostics: dict[str, list[dict]] = {}
    baseline: dict[str, float] = {}

    refiners: list[dict] = []      # the meta of each draw's refiner (one entry when shared by all draws)
    seconds_before = 0.0
    if start:
        rec = resume["records"]
        scores, diagnostics = _records_in(rec["scores"]), _records_in(rec["diagnostics"])
        refiners, seconds_before = list(rec.get("refiners", [])), float(resume.get("seconds", 0))
    draws_done = start

    def report(done: bool) -> dict:
        return {"settings": _settings_dict(s),
                "refiner": refiners[0] if len(refiners) == 1 else (refiners or None),
                "classes": classes, "unet_recipe": _RECIPE_TEXT,
                "methods": {k: _summ(v, classes) for k, v in scores.items()},
                "diagnostics": {k: _summ(v, classes) for k, v in diagnostics.items()},
                "seconds": round(seconds_before + time.time() - t0, 1), "complete": done,
                "resumed_after_draws": start or None,
                "records": {"draws_done": draws_done, **{k: v for k, v in made.items() if k != "settings"},
                            "scores": _records_out(scores),
                            "diagnostics": _records_out(diagnostics), "refiners": refiners}}

    def add(name: str, pred: np.ndarray, target: np.ndarray, table: dict | None = None) -> None:
        iou = 100 * iou_per_class(pred, target, n_cls)
        miou = float(np.nanmean(iou))
        base = baseline.get("shifted" if name.endswith("_shifted") else "default")
        diff = None if table is not None or name.startswith(f"unet_{s.n_labeled}_real") or base is None else miou - base
        (scores if table is None else table).setdefault(name, []).append(
            {"miou": miou, "per_class": iou.tolist(), "diff": diff})
        log(f"  {name}: {miou:.2f}" + ("" if diff is None else f" ({diff:+.2f} vs few-shot U-Net)"))

    ceiling = None
    if s.default_rows and start < s.draws:
        log("ceiling")
        ceil_img, ceil_lab = render_batch(s.n_ceiling, seed=3000 + s.seed, size=res)
        ceiling = train_segmenter(ceil_img, ceil_lab, n_cls, steps=s.ceiling_steps).model
    if on_partial is not None:
        on_partial(report(False))

    for draw in range(start, s.draws):
        log(f"draw {draw + 1}/{s.draws}")
        lab_img, lab_lab = render_batch(s.n_labeled, seed=2000 + s.seed, size=res, start=draw * s.n_labeled)
        few = train_segmenter(lab_img, lab_lab, n_cls, steps=s.unet_steps, seed=draw).model
        baseline["default"] = 100 * float(np.nanmean(iou_per_class(predict(few, test_img), test_lab, n_cls)))
        baseline["shifted"] = 100 * float(np.nanmean(iou_per_class(predict(few, sh_img), sh_lab, n_cls)))
        add(f"unet_{s.n_labeled}_real", predict(few, test_img), test_lab)
        add(f"unet_{s.n_labeled}_real_shifted", predict(few, sh_img), sh_lab)
        if ceiling is not None:
            add(f"unet_{s.n_ceiling}_real", predict(ceiling, test_img), test_lab)
            add(f"unet_{s.n_ceiling}_real_shifted", predict(ceiling, sh_img), sh_lab)

        served = pipe.train_segmenter(lab_img, lab_lab, classes, s.recipe(), seed=draw,
                                      teacher=Segmenter(few, classes, pipe.generator_id), log=log)
        add("served_pre_annotator", served.label(test_img).labels, test_lab)
        add("served_pre_annotator_shifted", served.label(sh_img).labels, sh_lab)

        lab_ws = pipe.invert(lab_img, s.inversion_steps)[0]
        interp = pipe.fit(lab_ws, lab_lab, classes, members=s.members, seed=draw)
        add("interpreter_inversion", pipe.label(interp, test_ws)[1].labels, test_lab)
        add("interpreter_inversion_shifted", pipe.label(interp, sh_ws)[1].labels, sh_lab)
        if per_draw:
            log("training this draw's refiner on unlabeled shifted images (parts read by its teacher) ...")
            state = None if refiner_state is None else Path(refiner_state).with_name(f"refiner-draw{draw}.state")
            refiner = table_refiner(pipe, s, state, log, parts=few)
            log(f"refiner: {refiner.meta}")
            sh_ws_ood = pipe.invert(sh_img, s.inversion_steps, refiner=refiner)[0]
        if refiner is not None:
            if per_draw or not refiners:
                refiners.append({"draw": draw, **refiner.meta} if per_draw else refiner.meta)
            _domain_shift_rows(pipe, s, draw, refiner, few, interp, sh_ws_ood, unlabeled_sh, lab_img, lab_lab,
                               test_img, test_lab, sh_img, sh_lab, add, log)
        if not s.default_rows:
            draws_done = draw + 1
            if on_partial is not None:
                on_partial(report(False))
            continue
        branch = pipe.fit_label_branch(lab_ws, lab_lab, classes, lab_img,
                                       LabelBranchConfig(n_classes=len(classes), steps=s.branch_steps), seed=draw)
        add("label_branch_inversion", pipe.label(branch, test_ws)[1].labels, test_lab)
        add("label_branch_inversion_shifted", pipe.label(branch, sh_ws)[1].labels, sh_lab)

        # Seeds draw·10⁶ + i: every size's seed range is a prefix of the largest one, so synthesize once.
        n_seeds = {n: int(n / (1 - s.filter_frac) + 0.5) for n in s.synthetic_sizes}
        seeds = list(range(draw * 10**6, draw * 10**6 + max(n_seeds.values())))
        pool = pipe.synthesize(seeds, segmenter=served)
        pool_img = np.stack([x.image for x in pool])
        truth = predict(ceiling, pool_img)
        add("pushed_label_agreement", np.stack([x.labels for x in pool]), truth, diagnostics)
        n_agree = min(len(pool), 1000)
        add("interpreter_label_agreement", pipe.label(interp, pipe.seed_latents(seeds[:n_agree]))[1].labels,
            truth[:n_agree], diagnostics)
        for n_syn in s.synthetic_sizes:
            samples = keep_most_certain(pool[:n_seeds[n_syn]], s.filter_frac)[:n_syn]
            model = train_segmenter(np.stack([x.image for x in samples]), np.stack([x.labels for x in samples]),
                                    n_cls, steps=s.unet_steps, seed=draw).model
            add(f"unet_synthetic_{n_syn}", predict(model, test_img), test_lab)
            add(f"unet_synthetic_{n_syn}_shifted", predict(model, sh_img), sh_lab)
        draws_done = draw + 1
        if on_partial is not None:
            on_partial(report(False))
    return report(True)


def _domain_shift_rows(pipe: Pipeline, s: QualitySettings, draw: int, refiner: Refiner, few, interp, sh_ws_ood,
                       unlabeled_sh: np.ndarray, lab_img: np.ndarray, lab_lab: np.ndarray, test_img: np.ndarray,
                       test_lab: np.ndarray, sh_img: np.ndarray, sh_lab: np.ndarray, add, log) -> None:
    """The rows of one draw that answer domain drift (module docstring); zero shifted labels except the
    reference row's."""
    classes, n_cls = list(CLASSES), len(CLASSES)
    ref_img, ref_lab = render_batch(s.n_labeled, seed=2000 + s.seed, size=pipe.resolution, start=draw * s.n_labeled,
                                    variant="shifted")
    reference = train_segmenter(ref_img, ref_lab, n_cls, steps=s.unet_steps, seed=draw).model
    add(f"reference_unet_{s.n_labeled}_shifted_labels_shifted", predict(reference, sh_img), sh_lab)
    served = pipe.train_segmenter(lab_img, lab_lab, classes, s.recipe(), seed=draw, refiner=refiner,
                                  unlabeled=unlabeled_sh, teacher=Segmenter(few, classes, pipe.generator_id), log=log)
    add("served_pre_annotator_refined", served.label(test_img).labels, test_lab)
    add("served_pre_annotator_refined_shifted", served.label(sh_img).labels, sh_lab)
    add("interpreter_ood_inversion_shifted", pipe.label(interp, sh_ws_ood)[1].labels, sh_lab)
    n_syn = min(s.synthetic_sizes)
    seeds = list(range(draw * 10**6, draw * 10**6 + int(n_syn / (1 - s.filter_frac) + 0.5)))
    samples = keep_most_certain(pipe.synthesize(seeds, segmenter=served), s.filter_frac)[:n_syn]
    refined = refiner.refine(np.stack([x.image for x in samples]))
    model = train_segmenter(refined, np.stack([x.labels for x in samples]), n_cls, steps=s.unet_steps, seed=draw).model
    add(f"unet_refined_synthetic_{n_syn}_shifted", predict(model, sh_img), sh_lab)


_RECIPE_TEXT = ("U-Net base 16, 4 levels; AdamW one-cycle lr 2e-3, batch 16; cross-entropy with 1/sqrt(frequency) "
                "class weights; flips, shifts up to 4 px, brightness/contrast/saturation jitter 0.2; flip "
                "test-time augmentation")


def to_markdown(report: dict) -> str:
    classes = report.get("classes") or []
    head = "| method | mIoU % (mean ± std) | vs few-shot U-Net | runs | " + " | ".join(classes) + " |"
    rows = [head, "|" + "---|" * (4 + len(classes))]
    for name, m in [*report["methods"].items(), *report.get("diagnostics", {}).items()]:
        kind = "" if name in report["methods"] else " (diagnostic)"
        diff = m.get("diff_vs_few_shot_mean")
        diff_s = "" if diff is None else f"{diff:+.2f} ± {m['diff_vs_few_shot_std']:.2f}"
        pc = m.get("per_class", {})
        cells = " | ".join("–" if pc.get(c) is None else f"{pc[c]:.0f}" for c in classes)
        rows.append(f"| {name}{kind} | {m['miou_mean']:.2f} ± {m['miou_std']:.2f} | {diff_s} | {len(m['runs'])} | {cells} |")
    recipe = report.get("unet_recipe")
    return "\n".join(rows) + "\n" + (f"\nEvery U-Net: {recipe}.\n" if recipe else "")


def write(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write quality.json and quality.md into ``out_dir``, each replaced whole (a run stopped mid-write
    leaves the previous file, which a resumed run reads)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("quality.json", json.dumps(report, indent=2) + "\n"), ("quality.md", to_markdown(report))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)
    return out / "quality.json", out / "quality.md"
