"""Sliding-window inference, the one implementation the UPerNet and Mask2Former tasks share: window placement and
the averaging of overlaps, checked by hand."""

from __future__ import annotations

import torch

from focalbench.tasks.sliding_window import slide_inference, window_starts


def test_windows_every_stride_with_the_last_flush_with_the_border():
    assert window_starts(40, 64, 43) == [0]  # below the crop: one window
    assert window_starts(64, 64, 43) == [0]
    assert window_starts(6, 4, 2) == [0, 2]
    assert window_starts(10, 4, 3) == [0, 3, 6]  # 6 = 10 - 4: the last window ends at the border
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]


def test_overlaps_are_averaged_by_hand():
    # A 4 x 6 image, 4-pixel windows every 2: columns [0, 4) and [2, 6). Each window predicts its own start column x
    # everywhere, so columns 0-1 see window 0 only (0), columns 2-3 both ((0 + 2) / 2 = 1), columns 4-5 window 2 (2).
    images = torch.zeros(1, 3, 4, 6)
    images[..., :] = torch.arange(6.0)  # each pixel holds its column, so a window's first pixel says where it is

    def start_column(window: torch.Tensor) -> torch.Tensor:
        assert window.shape[-2:] == (4, 4)
        return window[:, :1, :1, :1].expand(-1, 2, 4, 4) * torch.tensor([1.0, 10.0]).view(1, 2, 1, 1)

    scores = slide_inference(start_column, images, crop_size=4, stride=2)
    expected = torch.tensor([0.0, 0.0, 1.0, 1.0, 2.0, 2.0]).expand(4, 6)
    assert scores.shape == (1, 2, 4, 6)
    torch.testing.assert_close(scores[0, 0], expected, rtol=0, atol=0)
    torch.testing.assert_close(scores[0, 1], 10 * expected, rtol=0, atol=0)  # every output channel alike


def test_an_image_below_the_crop_is_predicted_whole():
    images = torch.randn(2, 3, 5, 7)
    calls = []

    def double(window: torch.Tensor) -> torch.Tensor:
        calls.append(window.shape)
        return 2 * window

    torch.testing.assert_close(slide_inference(double, images, crop_size=8, stride=5), 2 * images, rtol=0, atol=0)
    assert calls == [(2, 3, 5, 7)]
