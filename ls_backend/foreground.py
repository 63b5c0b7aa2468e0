"""Which label of a project's config is "the foreground": what a zero-label prediction paints.

Before a project's first fit, ``/predict`` can still answer with Labels4Free's foreground mask
(:mod:`model.fgbg`) under the label chosen here, in this order:

1. ``DGAN_FOREGROUND_LABEL`` — a label name of the config (``none``: never predict a foreground; a project
   without that label gets none, with a warning);
2. the label whose ``hint`` attribute mentions the word "foreground" (``<Label value="Cat" hint="foreground"/>``);
3. the label whose name reads as a foreground: a word of it is "foreground", "fg", "object" or "objects"
   ("Foreground", "FG mask", "Main object").

Several labels matching at the same step is ambiguous: no foreground is predicted, and the warning says
how to choose. A config with no matching label gets no zero-label predictions (as before).
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET

from .brush import CONTROLS, LabelConfigError, LabelMap

log = logging.getLogger(__name__)

FOREGROUND_WORDS = frozenset({"foreground", "fg", "object", "objects"})
OFF = "none"


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def label_hints(label_config: str, label_map: LabelMap) -> dict[str, str]:
    """{label: its ``hint`` attribute} for the labels of the project's BrushLabels/PolygonLabels that have one."""
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError as e:
        raise LabelConfigError(f"the label config is not valid XML ({e})") from e
    names = {label_map.from_name, label_map.polygon_name} - {""}
    hints: dict[str, str] = {}
    for control in root.iter():
        if control.tag in CONTROLS and control.get("name") in names:
            for el in control:
                if el.tag == "Label" and el.get("value") and el.get("hint"):
                    hints.setdefault(el.get("value"), el.get("hint"))
    return hints


def foreground_label(label_config: str, label_map: LabelMap, chosen: str | None = None) -> str | None:
    """The project's foreground label (see the module docstring), or None when it has none.

    ``chosen``: ``DGAN_FOREGROUND_LABEL``. It is set for the whole installation, so a project whose config
    does not have that label gets no zero-label foreground (logged with the project's labels), not an
    error: the other projects keep working."""
    if chosen:
        if chosen.strip().lower() == OFF:
            return None
        if chosen not in label_map.labels:
            log.warning("DGAN_FOREGROUND_LABEL=%r is not a label of this project's config (its labels: %s): no "
                        "zero-label foreground for it. Set the variable to one of them, to '%s' to predict none, "
                        "or unset it to find the label by its hint or name", chosen, list(label_map.labels), OFF)
            return None
        return chosen
    hinted = [label for label, hint in label_hints(label_config, label_map).items() if "foreground" in _words(hint)]
    named = [label for label in label_map.labels if _words(label) & FOREGROUND_WORDS]
    for found, how in ((hinted, "a hint mentioning 'foreground'"), (named, "a foreground-like name")):
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            log.warning("labels %s all have %s; no zero-label foreground is predicted. Set DGAN_FOREGROUND_LABEL "
                        "to the one to paint", found, how)
            return None
    return None
