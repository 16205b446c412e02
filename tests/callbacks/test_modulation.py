"""The focal modulation maps are the magnitude of the last block's modulator M = h(Z_out)."""

from __future__ import annotations

import torch

from focalbench.callbacks.modulation import last_modulation, modulation_maps
from focalbench.models import build_backbone, create_model


def test_maps_are_the_mean_magnitude_of_the_last_modulator():
    torch.manual_seed(0)
    model = create_model("focalnet_tiny_srf", num_classes=3, embed_dim=8, depths=(1, 1, 1, 1)).eval()
    trunk, modulation = last_modulation(torch.nn.Sequential(model))
    assert trunk is model and modulation is model.layers[-1].blocks[-1].modulation
    images = torch.randn(2, 3, 64, 48)
    maps = modulation_maps(trunk, modulation, images)
    assert maps.shape == (2, 64, 48)

    assert all(block.fused_inference for block in model.modules() if hasattr(block, "fused_inference"))  # restored
    model.set_fused_inference(False)  # module hooks fire only on the plain path
    captured = {}
    handle = modulation.h.register_forward_hook(lambda _m, _i, out: captured.setdefault("m", out))
    with torch.no_grad():
        model(images)
    handle.remove()
    expected = captured["m"].abs().mean(1, keepdim=True)  # (2, 1, 2, 2) at stride 32 (48 px padded to 64)
    pooled = torch.nn.functional.adaptive_avg_pool2d(maps[:, None], expected.shape[-2:])
    assert torch.corrcoef(torch.stack([pooled.flatten(), expected.flatten()]))[0, 1] > 0.9


def test_no_focalnet_no_maps():
    assert last_modulation(build_backbone("resnet18")) == (None, None)
