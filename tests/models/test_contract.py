"""The dense-backbone contract (``focalbench.models.contract.DenseBackbone``), one test for every backbone kind:
FocalNet variants (four-stage and isotropic) and timm models (ResNet, ConvNeXt, Swin with its NHWC stages)."""

from __future__ import annotations

import pytest
import torch
from timm.optim import param_groups_layer_decay

from focalbench.models import TimmBackbone, build_backbone
from focalbench.models.contract import (
    IMAGENET_NORMALIZATION,
    DenseBackbone,
    freeze_stages,
    input_normalization,
    layer_ids,
)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_FOCALNET = {"embed_dim": 8, "depths": [1, 1, 1, 1], "focal_windows": 9}
BACKBONES = {
    "focalnet_tiny_lrf": TINY_FOCALNET,
    "focalnet_tiny_iso": {"embed_dim": 16, "depths": [2]},
    "resnet18": {},
    "convnext_atto": {},
    # A small Swin: its first stage has 16 channels, as many as the rows of a 64 px input at stride 4.
    "swin_tiny_patch4_window7_224": {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]},
}


def build(name: str, **extra) -> torch.nn.Module:
    kwargs = {**BACKBONES[name], **extra}
    if name.startswith("swin"):  # build_backbone keeps FocalNet's embed_dim / depths away from timm models
        return TimmBackbone(name, **kwargs).eval()
    return build_backbone(name, **kwargs).eval()


@pytest.mark.parametrize("name", BACKBONES)
def test_forward_returns_advertised_nchw_levels_for_any_input_size(name):
    backbone = build(name)
    assert isinstance(backbone, DenseBackbone)
    assert len(backbone.out_channels) == len(backbone.strides) and backbone.size_divisibility == max(backbone.strides)
    x = torch.randn(2, 3, 50, 70)  # not a multiple of the stride: the backbone pads (right / bottom) itself
    with torch.no_grad():
        features = backbone(x)
    d = backbone.size_divisibility
    padded = (-(-50 // d) * d, -(-70 // d) * d)  # 64 × 96 at 32, 64 × 80 at 16
    assert [tuple(f.shape) for f in features] == [
        (2, c, padded[0] // s, padded[1] // s) for c, s in zip(backbone.out_channels, backbone.strides)
    ]


def test_swin_nhwc_stages_come_out_nchw_even_when_height_equals_channels():
    # Swin's stages are NHWC inside timm. A map of 16 rows at 16 channels cannot be told apart by its shape: the
    # transposition must come from timm's declared output format. Compare with the model's own first stage.
    backbone = build("swin_tiny_patch4_window7_224")
    assert backbone.out_channels[0] == 16
    x = torch.randn(1, 3, 64, 96)  # stride 4: 16 rows × 24 columns × 16 channels
    swin = backbone.body.model
    with torch.no_grad():
        ours, theirs = backbone(x)[0], swin.layers[0](swin.patch_embed(x))
    assert theirs.shape == (1, 16, 24, 16)  # NHWC: H 16, W 24, C 16
    torch.testing.assert_close(ours, theirs.permute(0, 3, 1, 2))


@pytest.mark.parametrize("name", BACKBONES)
def test_grad_checkpointing_keeps_outputs_and_gradients(name):
    torch.manual_seed(0)
    backbone = build(name, drop_path_rate=0.0).train()
    x = torch.randn(1, 3, 64, 64)

    def grads() -> list[torch.Tensor]:
        backbone.zero_grad()
        sum(f.square().mean() for f in backbone(x)).backward()
        return [p.grad.clone() for p in backbone.parameters() if p.grad is not None]

    plain = grads()
    backbone.set_grad_checkpointing(True)
    checkpointed = grads()
    assert len(plain) == len(checkpointed) > 0
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", BACKBONES)
def test_group_matcher_orders_parameters_from_stem_to_top(name):
    backbone = build(name)
    ids = layer_ids(backbone)
    assert set(ids) == {n for n, _ in backbone.named_parameters()}  # every parameter has a depth
    stem = [n for n, i in ids.items() if i == 0]
    assert stem and all(any(s in n for s in ("patch_embed", "conv1", "bn1", "stem")) for n in stem)
    depth = max(ids.values())
    assert depth >= 2  # stem, blocks, top at least
    groups = param_groups_layer_decay(backbone, weight_decay=0.05, layer_decay=0.5)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    for n, p in backbone.named_parameters():  # lr × 0.5 per level below the top
        assert scale_of[id(p)] == 0.5 ** (depth - ids[n]), n


@pytest.mark.parametrize("name", ["focalnet_tiny_lrf", "resnet18", "swin_tiny_patch4_window7_224"])
def test_freeze_stages_freezes_the_stem_and_first_stages_only(name):
    backbone = build(name)
    coarse = layer_ids(backbone, coarse=True)
    frozen = set(freeze_stages(backbone, 2))
    assert frozen == {n for n, i in coarse.items() if i <= 2} and frozen
    for n, p in backbone.named_parameters():
        assert p.requires_grad == (n not in frozen)
    assert any(p.requires_grad for p in backbone.parameters())


def test_input_normalization_comes_from_the_weights_config():
    assert input_normalization(build("focalnet_tiny_lrf")) == IMAGENET_NORMALIZATION
    assert input_normalization(build("resnet18")) == IMAGENET_NORMALIZATION  # timm's resnet18: ImageNet stats
    clip_like = build_backbone("convnext_atto", pretrained_cfg_overlay={"mean": (0.5,) * 3, "std": (0.25,) * 3})
    assert input_normalization(clip_like) == ((0.5,) * 3, (0.25,) * 3)


def test_focalnet_settings_do_not_reach_a_timm_backbone(caplog):
    backbone = build_backbone("resnet18", embed_dim=8, depths=[1, 1, 1, 1], focal_windows=9, drop_path_rate=0.1)
    assert backbone.out_channels == [64, 128, 256, 512]
    assert "ignoring the FocalNet settings depths, embed_dim, focal_windows" in caplog.text


def test_isotropic_variant_is_a_single_level_backbone():
    backbone = build("focalnet_tiny_iso")
    assert backbone.strides == [16] and backbone.out_channels == [16]
