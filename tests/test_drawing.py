import numpy as np
import torch

from segkit.reports.drawing import IGNORE_COLOUR, colorize, ignore_colour, legend, overlay, sample_panel, to_rgb

PALETTE = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]


def test_colorize_uses_the_palette_and_marks_ignored_pixels():
    mask = np.array([[0, 1], [2, 255]])
    colours = colorize(mask, PALETTE, ignore_index=255)
    assert colours[0, 1].tolist() == [255, 0, 0] and colours[1, 0].tolist() == [0, 255, 0]
    assert tuple(colours[1, 1]) == IGNORE_COLOUR


def test_panel_is_image_truth_prediction_side_by_side():
    image = torch.rand(1, 5, 7)  # one channel: shown grey
    target = torch.tensor([[1] * 7] * 5)
    pred = torch.zeros(5, 7, dtype=torch.long)
    panel = sample_panel(image, target, pred, PALETTE, 255)
    assert panel.shape == (5, 21, 3) and panel.dtype == np.uint8
    assert np.array_equal(panel[:, :7], to_rgb(image))
    assert (panel[:, 7:14, 0] > panel[:, 14:, 0]).all()  # the truth overlay is red where the prediction is not


CAMVID = [
    [128, 128, 128],
    [128, 0, 0],
    [192, 192, 128],
    [128, 64, 128],
    [60, 40, 222],
    [128, 128, 0],
    [192, 128, 128],
    [64, 64, 128],
    [64, 0, 128],
    [64, 64, 0],
    [0, 128, 192],
]


def test_ignored_pixels_are_opaque_in_a_colour_no_class_uses():
    """Blended over black padding, a white ignore read as grey: CamVid's sky. Now it is opaque and apart."""
    mask = np.array([[0, 255], [255, 1]])
    black = np.zeros((2, 2, 3), np.uint8)
    drawn = overlay(black, mask, CAMVID, ignore_index=255)
    colour = ignore_colour(CAMVID)
    assert tuple(drawn[0, 1]) == colour == tuple(drawn[1, 0])
    assert all(np.linalg.norm(np.subtract(colour, c)) >= 60 for c in CAMVID)
    assert tuple(drawn[0, 0]) == (64, 64, 64)  # classes still blend
    # A palette that uses the first choice gets another one.
    assert ignore_colour([[255, 0, 255], [250, 5, 250]]) != IGNORE_COLOUR
    assert ignore_colour([[255, 0, 255], [255, 255, 255]]) not in {(255, 0, 255), (255, 255, 255)}


def test_the_legend_shows_the_ignore_colour():
    strip = legend(["a", "b"], PALETTE, 420, ignore_index=255)
    assert (strip.reshape(-1, 3) == IGNORE_COLOUR).all(axis=1).any()
    assert not (legend(["a", "b"], PALETTE, 420).reshape(-1, 3) == IGNORE_COLOUR).all(axis=1).any()
