"""Our weights written in the timm and transformers layouts (the inverse of the readers): same logits, and read
back by our own loader to the very same tensors, for the plain, the large (overlapping embedding, post-norm,
LayerScale) and the huge (+ modulation post-norm) flag sets."""

from __future__ import annotations

import pytest
import torch

from focalbench.models import FocalNet
from focalbench.models.checkpoint_export import from_focalbench
from focalbench.models.checkpoints import CheckpointError, to_focalbench

SMALL = {"embed_dim": 8, "depths": (1, 1, 2, 1), "focal_levels": 2, "focal_windows": 3}
FLAGS = {
    "plain": {},
    "large": {"use_overlap_embed": True, "use_post_norm": True, "layerscale_value": 1e-4},
    "huge": {
        "use_overlap_embed": True, "use_post_norm": True, "layerscale_value": 1e-4,
        "use_post_norm_in_modulation": True, "normalize_modulator": True,
    },
}  # fmt: skip


def ours(flags: dict) -> FocalNet:
    torch.manual_seed(0)
    model = FocalNet(num_classes=5, drop_path_rate=0.0, **SMALL, **flags).eval()
    model.set_fused_inference(False)
    with torch.no_grad():  # LayerScale at 1e-4 and unit norms would hide a mis-mapped one
        for name, param in model.named_parameters():
            if "gamma" in name or (param.ndim == 1 and "norm" in name):
                param.normal_(1 if name.endswith("weight") else 0, 0.3)
    return model


@pytest.mark.parametrize("flags", FLAGS)
def test_timm_layout_same_logits_and_back(flags, one_thread):
    from timm.models.focalnet import FocalNet as TimmFocalNet

    model, f = ours(FLAGS[flags]), FLAGS[flags]
    timm_model = TimmFocalNet(
        num_classes=5, embed_dim=8, depths=(1, 1, 2, 1), focal_levels=(2,) * 4, focal_windows=(3,) * 4,
        use_overlap_down=f.get("use_overlap_embed", False), use_post_norm=f.get("use_post_norm", False),
        use_post_norm_in_modulation=f.get("use_post_norm_in_modulation", False),
        normalize_modulator=f.get("normalize_modulator", False), layerscale_value=f.get("layerscale_value"),
    ).eval()  # fmt: skip
    state = from_focalbench(model.state_dict(), timm_model.state_dict(), "timm")
    timm_model.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(timm_model(x), model(x), rtol=0, atol=1e-5)
    back = to_focalbench(state)
    assert back.keys() == model.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("flags", FLAGS)
def test_transformers_layout_same_logits_and_back(flags, one_thread):
    from transformers import FocalNetConfig, FocalNetForImageClassification

    model, f = ours(FLAGS[flags]), FLAGS[flags]
    config = FocalNetConfig(
        embed_dim=8, depths=[1, 1, 2, 1], hidden_sizes=[16, 32, 64, 64], focal_levels=[2] * 4, focal_windows=[3] * 4,
        use_conv_embed=f.get("use_overlap_embed", False), use_post_layernorm=f.get("use_post_norm", False),
        use_layerscale="layerscale_value" in f,
        use_post_layernorm_in_modulation=f.get("use_post_norm_in_modulation", False),
        normalize_modulator=f.get("normalize_modulator", False), num_labels=5, drop_path_rate=0.0,
    )  # fmt: skip
    hf = FocalNetForImageClassification(config).eval()
    state = from_focalbench(model.state_dict(), hf.state_dict(), "hf")
    hf.load_state_dict(state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x).logits, model(x), rtol=0, atol=1e-4)
    back = to_focalbench(state)
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_a_target_of_another_architecture_is_named(one_thread):
    from timm.models.focalnet import FocalNet as TimmFocalNet

    timm_model = TimmFocalNet(num_classes=5, embed_dim=8, depths=(1, 1, 1, 1))  # one block fewer in stage 3
    with pytest.raises(CheckpointError, match=r"left over \['layers.2.blocks.1"):
        from_focalbench(ours({}).state_dict(), timm_model.state_dict(), "timm")
