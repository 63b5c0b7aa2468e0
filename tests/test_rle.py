"""The numpy brush RLE codec against label-studio-sdk's reference codec."""

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle, encode_rle, mask2rle

from ls_backend.rle import decode, decode_mask, encode_classes


def _masks():
    rng = np.random.default_rng(0)
    ring = np.zeros((64, 64), np.uint8)
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 32)
    ring[(r > 10) & (r < 20)] = 1
    speck = np.zeros((64, 64), np.uint8)
    speck[5, 7] = 1
    yield "ring", ring
    yield "speck", speck
    yield "empty", np.zeros((64, 64), np.uint8)
    yield "full", np.ones((64, 64), np.uint8)
    yield "noise", (rng.random((64, 64)) > 0.5).astype(np.uint8)
    yield "blobs", (rng.random((16, 16)) > 0.7).repeat(4, 0).repeat(4, 1).astype(np.uint8)
    yield "odd size", (rng.random((37, 53)) > 0.9).astype(np.uint8)
    big = np.zeros((300, 300), np.uint8)            # runs past 65,536 values: split records
    big[200:210, 40:60] = 1
    yield "long runs", big
    yield "full big", np.ones((300, 300), np.uint8)


@pytest.mark.parametrize("name,mask", list(_masks()), ids=[n for n, _ in _masks()])
def test_encode_is_byte_identical_to_the_sdk_and_round_trips(name, mask):
    ours = encode_classes(mask, [1])[1]
    assert ours == [int(v) for v in mask2rle(mask * 255)]
    assert np.array_equal(decode_mask(ours, *mask.shape), mask.astype(bool))
    assert np.array_equal(decode(ours), np.asarray(decode_rle(ours), np.uint8))


def test_every_class_of_a_mask_at_once_matches_the_sdk_class_by_class():
    rng = np.random.default_rng(1)
    blobs = rng.integers(0, 6, (12, 12)).repeat(5, 0).repeat(5, 1).astype(np.uint8)    # 60x60, ids 0..5
    blobs[:, :3] = 4                                                                     # a class at the start
    blobs[-1, -7:] = 5                                                                   # ... and at the end
    big = np.zeros((300, 300), np.int64)                                                 # int ids, long runs
    big[100:120, 30:90], big[250:, :] = 3, 7
    for labels, ids in ((blobs, [1, 2, 3, 4, 5, 9]), (big, [3, 7, 0]), (blobs, [])):
        got = encode_classes(labels, ids)
        assert list(got) == ids
        for c in ids:                                   # 9: absent, an empty brush; 0: the background itself
            assert got[c] == [int(v) for v in mask2rle((labels == c).astype(np.uint8) * 255)], c
    with pytest.raises(ValueError, match="distinct integers 0..255"):
        encode_classes(blobs, [1, 1])
    with pytest.raises(ValueError, match="0..255"):
        encode_classes(big * 100, [3])
    with pytest.raises(ValueError, match="at least one pixel"):
        encode_classes(np.zeros((0, 5), np.uint8), [1])


def test_decode_reads_literal_blocks_as_the_web_editor_writes_them():
    # rle-pack literal blocks (flag 0, several values) — the SDK decoder is the reference.
    values = np.array([0, 0, 0, 0, 255, 255, 255, 255, 9, 10, 11, 12, 255, 255, 255, 255], np.int64)
    rle = encode_rle(values)
    assert np.array_equal(decode(rle), values.astype(np.uint8))
    # A hand-made stream: num=5, word 8, sizes 3,4,8,16; literal block of 3 values, then a repeat of 2.
    bits = f"{5:032b}{7:05b}" + "".join(f"{s - 1:04b}" for s in (3, 4, 8, 16))
    bits += "0" + "00" + f"{2:03b}" + f"{1:08b}{2:08b}{3:08b}" + "1" + "00" + f"{1:03b}" + f"{200:08b}"
    bits += "0" * (-len(bits) % 8)
    data = [int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)]
    assert decode(data).tolist() == [1, 2, 3, 200, 200] == np.asarray(decode_rle(data)).tolist()


def test_bad_streams_say_what_is_wrong():
    rle = encode_classes(np.ones((8, 8), np.uint8), [1])[1]
    with pytest.raises(ValueError, match="ends in the middle"):
        decode(rle[:6])
    with pytest.raises(ValueError, match="0..255"):
        decode([300, 1, 2])
    with pytest.raises(ValueError, match="original_height/original_width"):
        decode_mask(rle, 8, 9)
    with pytest.raises(ValueError, match="2-D"):
        encode_classes(np.ones((2, 2, 2)), [1])
