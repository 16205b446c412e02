"""The pieces every export format shares: plain (unfused) inference while exporting, and the output check."""

from __future__ import annotations

import pytest
import torch

from focalbench.export import ExportError
from focalbench.export.core import check_close, plain_inference
from focalbench.models import create_model
from focalbench.models.focalnet_block import FocalNetBlock


def test_plain_inference_turns_the_fused_path_off_and_restores_it():
    model = create_model("focalnet_tiny_srf", num_classes=3, embed_dim=8, depths=[1, 1, 1, 1])
    blocks = [m for m in model.modules() if isinstance(m, FocalNetBlock)]
    blocks[0].fused_inference = False  # a user's own setting comes back as it was
    with plain_inference(model):
        assert not model.training and not any(block.fused_inference for block in blocks)
    assert model.training and [block.fused_inference for block in blocks] == [False, True, True, True]


def test_check_close_reports_the_largest_difference_in_one_line():
    want = [torch.zeros(2, 3)]
    assert check_close("x", [torch.full((2, 3), 5e-6)], want, atol=1e-5) == pytest.approx(5e-6)
    with pytest.raises(ExportError, match=r"^ONNX Runtime: outputs differ from PyTorch's by 2\.00e-03 \(tolerance"):
        check_close("ONNX Runtime", [torch.full((2, 3), 2e-3)], want, atol=1e-4)
    with pytest.raises(ExportError, match=r"output 0 has shape \(3,\), PyTorch's \(2, 3\)"):
        check_close("x", [torch.zeros(3)], want, atol=1e-4)


def test_check_close_allows_a_relative_error_for_pixel_coordinates():
    want = [torch.tensor([1333.0, 2.0])]
    got = [torch.nextafter(want[0], torch.tensor(2000.0))]  # one float32 step (1.22e-4) above 1333
    assert check_close("x", got, want, atol=1e-4, rtol=1e-6) == pytest.approx(2**-13)
    with pytest.raises(ExportError, match=r"by 1\.22e-04 \(tolerance 1e-04\)$"):
        check_close("x", got, want, atol=1e-4)  # without it, the same difference fails
    with pytest.raises(ExportError, match=r"by 2\.00e-04 \(tolerance 1e-04 \+ 1e-06 × \|value\|\)"):
        check_close("x", [torch.tensor([1333.0, 2.0 + 2e-4])], want, atol=1e-4, rtol=1e-6)  # small values: atol
