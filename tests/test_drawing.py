import numpy as np
import torch

from segkit.drawing import IGNORE_COLOUR, colorize, sample_panel, to_rgb

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
