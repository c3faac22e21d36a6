"""Mask encodings are strict: every stored value either means a class (or ignore) or is reported."""

import numpy as np
import pytest

from segkit.data.encoding import INVALID, MaskEncoding


def test_index_keeps_classes_and_ignore_and_flags_the_rest():
    enc = MaskEncoding(3, ignore_index=255)
    stored = np.array([[0, 1, 2], [255, 3, 254]])
    assert enc(stored).tolist() == [[0, 1, 2], [255, INVALID, INVALID]]
    assert enc.describe_invalid(stored, enc(stored)) == "3, 254"


def test_values_map_binary_masks_and_nothing_else():
    enc = MaskEncoding(2, ignore_index=255, encoding="values", values=[0, 255])
    assert enc(np.array([0, 255, 1, 128])).tolist() == [0, 1, INVALID, INVALID]


def test_label_map_is_a_complete_table():
    enc = MaskEncoding(2, ignore_index=255, encoding="label_map", label_map={7: 0, 26: 1, 0: 255})
    assert enc(np.array([7, 26, 0, 8])).tolist() == [0, 1, 255, INVALID]
    with pytest.raises(ValueError, match="maps to \\[5\\]"):
        MaskEncoding(2, encoding="label_map", label_map={1: 5})


def test_reduce_zero_label_moves_zero_to_ignore():
    enc = MaskEncoding(150, ignore_index=255, reduce_zero_label=True)
    assert enc(np.array([0, 1, 150, 255, 151])).tolist() == [255, 0, 149, 255, INVALID]


def test_rgb_colours_and_an_ignore_colour():
    enc = MaskEncoding(2, 255, encoding="rgb", colors=[[0, 0, 0], [250, 10, 3]], ignore_color=[255, 255, 255])
    stored = np.array([[[0, 0, 0], [250, 10, 3], [255, 255, 255], [250, 10, 4]]], dtype=np.uint8)
    assert enc(stored).tolist() == [[0, 1, 255, INVALID]]
    assert enc.describe_invalid(stored, enc(stored)) == "(250, 10, 4)"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(encoding="values", values=[0, 1, 2]), "mask_values has 3 values but data.num_classes is 2"),
        (dict(encoding="values"), "needs data.mask_values"),
        (dict(encoding="palette"), "is not one of"),
    ],
)
def test_config_mistakes_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MaskEncoding(2, **kwargs)
