"""Zero-label foreground predictions: which label is the foreground, and /predict before the first fit."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from label_studio_sdk.converter.brush import decode_rle

from ls_backend.backend import FOREGROUND_VERSION, Backend
from ls_backend.brush import parse_label_config
from ls_backend.config import ConfigError, Settings
from ls_backend.foreground import foreground_label
from model.fgbg import AlphaNet, FgBg, FgBgConfig, read_layers
from model.generator.checkpoints import generator_id, save_generator
from model.images import png_data_uri, to_uint8
from model.synthesis import latents_for_seeds

from .conftest import tiny_generator


def config(*labels: str, control: str = "BrushLabels") -> str:
    inner = "".join(f"<Label {attrs}/>" for attrs in labels)
    return f'<View><Image name="image" value="$image"/><{control} name="tag" toName="image">{inner}</{control}></View>'


FG = config('value="Background clutter"', 'value="Foreground"')
NO_FG = config('value="dark"', 'value="bright"')


def pick(xml: str, chosen: str | None = None) -> str | None:
    return foreground_label(xml, parse_label_config(xml), chosen)


def test_the_foreground_label_by_env_hint_or_name(caplog):
    assert pick(FG) == "Foreground"
    assert pick(config('value="Main object"', 'value="shadow"')) == "Main object"
    assert pick(config('value="fg_mask"'), None) == "fg_mask"
    assert pick(NO_FG) is None
    # a hint beats a name; the hint may be a sentence
    assert pick(config('value="object"', 'value="cat" hint="the foreground animal"')) == "cat"
    assert pick(config('value="cat" hint="foreground"', control="PolygonLabels")) == "cat"
    # the environment beats both; "none" turns it off
    assert pick(FG, "Background clutter") == "Background clutter"
    assert pick(FG, "none") is None
    # the variable holds for every project: one without that label gets no foreground, and the log says why
    with caplog.at_level(logging.WARNING):
        assert pick(FG, "Cat") is None
    assert "DGAN_FOREGROUND_LABEL='Cat' is not a label" in caplog.text and "'Foreground'" in caplog.text
    caplog.clear()
    # two candidates: ambiguous, nothing painted, and the log says what to set
    with caplog.at_level(logging.WARNING):
        assert pick(config('value="object"', 'value="FG"')) is None
    assert "DGAN_FOREGROUND_LABEL" in caplog.text


@pytest.fixture
def backend(tmp_path):
    """A backend on a tiny generator with an (untrained) alpha-net whose mask covers about half the image."""
    G = tiny_generator()
    gen = save_generator(G, tmp_path / "g.pt")
    torch.manual_seed(0)
    cfg = FgBgConfig()
    model = FgBg(AlphaNet([c for _, c in read_layers(G)], cfg.map_channels), cfg, generator_id(G))
    alpha = model.alpha(G, latents_for_seeds(G, list(range(8))))
    with torch.no_grad():     # centre the logits so that α > ½ on about half the pixels
        model.net.head.bias -= float(np.log(np.median(alpha) / (1 - np.median(alpha))))
    fgbg = model.save(tmp_path / "fgbg.pt")

    def make(**env) -> Backend:
        base = {"LABEL_STUDIO_URL": "http://127.0.0.1:9", "LABEL_STUDIO_API_KEY": "x" * 40,
                "MODEL_DIR": str(tmp_path / "models"), "DGAN_GENERATOR": str(gen), "DGAN_FGBG": str(fgbg),
                "DGAN_INVERSION_STEPS": "2"}
        return Backend(Settings.from_env({**base, **env}))

    return make


def _decode(entry: dict, label_map, size: int = 32) -> np.ndarray:
    out = np.zeros((size, size), np.uint8)
    for res in entry["result"]:
        assert res["from_name"] == "tag" and res["type"] == "brushlabels"
        alpha = np.asarray(decode_rle(res["value"]["rle"]), np.uint8).reshape(size, size, 4)[:, :, 3]
        out[alpha > 127] = label_map.class_id(res["value"]["brushlabels"][0])
    return out


def _tasks(G, seeds: list[int]) -> list[dict]:
    images = to_uint8(G.synthesis(latents_for_seeds(G, seeds)))
    gid = generator_id(G)
    tasks = [{"id": 100 + i, "data": {"image": png_data_uri(img), "dgan_seed": s, "dgan_generator_id": gid}}
             for i, (img, s) in enumerate(zip(images, seeds))]
    tasks[-1]["data"] = {"image": tasks[-1]["data"]["image"]}      # a "real" image: inverted
    return tasks


def test_predict_paints_the_foreground_before_the_first_fit(backend):
    b = backend()
    G, lm = b.generator, parse_label_config(FG)
    seeds = list(range(10, 14))
    tasks = _tasks(G, seeds)
    entries, leftover = b.predict(7, tasks, FG)
    assert leftover == [] and [e["model_version"] for e in entries] == [FOREGROUND_VERSION] * 4
    expected, cert = b.pipeline.foreground_labels(b.fgbg, latents_for_seeds(G, seeds[:3]), lm.class_id("Foreground"))
    for e, want, c in zip(entries, expected, cert):
        got = _decode(e, lm)
        assert np.array_equal(got, want) and 0 < (got > 0).mean() < 1       # a mask, neither empty nor full
        assert e["score"] == round(float(c), 4)
    # the real image went through inversion (its latent cached) and got a foreground brush too
    assert len(list((b.store.root / "latents").glob("*.pt"))) == 1
    assert set(np.unique(_decode(entries[3], lm))) == {0, lm.class_id("Foreground")}
    assert b.setup(7, FG) == {"model_version": FOREGROUND_VERSION}

    # a config without a foreground label: nothing to say before the first fit
    entries, _ = b.predict(7, tasks, NO_FG)
    assert [(e["model_version"], e["result"]) for e in entries] == [("dgan-untrained", [])] * 4
    assert b.setup(7, NO_FG) == {"model_version": "dgan-untrained"}


def test_the_chosen_label_wins_and_a_project_without_it_gets_no_foreground(backend):
    b = backend(DGAN_FOREGROUND_LABEL="Background clutter")
    G, lm = b.generator, parse_label_config(FG)
    entries, _ = b.predict(7, _tasks(G, [10, 11]), FG)
    assert {r["value"]["brushlabels"][0] for r in entries[0]["result"]} == {"Background clutter"}
    entries, _ = backend(DGAN_FOREGROUND_LABEL="Cat").predict(7, _tasks(G, [10, 11]), FG)
    assert [(e["model_version"], e["result"]) for e in entries] == [("dgan-untrained", [])] * 2
    entries, _ = backend(DGAN_FOREGROUND_LABEL="none").predict(7, _tasks(G, [10, 11]), FG)
    assert entries[0]["model_version"] == "dgan-untrained"


def test_no_alpha_net_for_the_generator_means_no_foreground(backend, tmp_path):
    b = backend(DGAN_FGBG="")          # the shipped alpha-net, if any, belongs to the shipped generator
    entries, _ = b.predict(7, _tasks(b.generator, [10, 11]), FG)
    assert [e["model_version"] for e in entries] == ["dgan-untrained"] * 2
    with pytest.raises(ConfigError, match="DGAN_FGBG='.*nope.pt' does not exist"):
        backend(DGAN_FGBG=str(tmp_path / "nope.pt"))
