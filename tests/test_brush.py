import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from ls_backend.brush import LabelConfigError, mask_to_results, parse_label_config, results_to_mask, validate_results

CONFIG = """<View>
  <Image name="img" value="$picture"/>
  <BrushLabels name="parts" toName="img">
    <Label value="Eye" background="blue"/>
    <Label value="Face" background="red"/>
    <Label value="Mouth"/>
  </BrushLabels>
</View>"""


def test_parse_label_config():
    lm = parse_label_config(CONFIG)
    assert (lm.from_name, lm.to_name, lm.image_key) == ("parts", "img", "picture")
    assert lm.class_names == ["background", "Eye", "Face", "Mouth"]
    with pytest.raises(LabelConfigError, match="no <BrushLabels>"):
        parse_label_config('<View><Image name="i" value="$image"/><Choices name="c" toName="i"/></View>')
    with pytest.raises(LabelConfigError, match="not bound to an <Image>|no <BrushLabels> is bound"):
        parse_label_config('<View><Image name="i" value="$image"/><BrushLabels name="b" toName="x">'
                           '<Label value="A"/></BrushLabels></View>')
    with pytest.raises(LabelConfigError, match="not valid XML"):
        parse_label_config("<View><Image")


def test_mask_round_trip_keeps_holes_and_specks():
    lm = parse_label_config(CONFIG)
    mask = np.zeros((20, 30), np.uint8)
    yy, xx = np.mgrid[:20, :30]
    ring = ((yy - 10) ** 2 + (xx - 10) ** 2 <= 49) & ((yy - 10) ** 2 + (xx - 10) ** 2 > 9)
    mask[ring] = 2
    mask[3, 25] = 1            # a 1-pixel speck
    mask[15:18, 20:28] = 3
    results = mask_to_results(mask, lm)
    assert {r["value"]["brushlabels"][0] for r in results} == {"Eye", "Face", "Mouth"}
    validate_results(results, lm)
    alpha = np.asarray(decode_rle(results[0]["value"]["rle"]), np.uint8).reshape(20, 30, 4)[:, :, 3]
    assert alpha.max() == 255     # decodable by the SDK's own decoder
    back = results_to_mask(results, lm)
    assert np.array_equal(back, mask)


def test_unknown_labels_and_foreign_results_are_refused():
    lm = parse_label_config(CONFIG)
    results = mask_to_results(np.ones((4, 4), np.uint8), lm)
    results[0]["value"]["brushlabels"] = ["Nose"]
    with pytest.raises(LabelConfigError, match="'Nose' is not in the project's BrushLabels"):
        results_to_mask(results, lm)
    results[0]["from_name"] = "other"
    with pytest.raises(LabelConfigError, match="result targets 'other'"):
        validate_results(results, lm)
    assert np.array_equal(results_to_mask([], lm, 3, 5), np.zeros((3, 5)))   # an empty annotation is all background


def test_brush_result_without_size_is_bad_input_not_a_crash():
    lm = parse_label_config(CONFIG)
    results = mask_to_results(np.ones((4, 4), np.uint8), lm)
    del results[0]["original_height"]
    with pytest.raises(ValueError, match="original_height/original_width"):
        results_to_mask(results, lm)
