"""Building models by name: ``create_model`` and the dense-task ``build_backbone`` (FocalNet or any timm model).

The FocalNet backbone returns the official dense-task features: each stage's output before its downsampling,
through its own LayerNorm ``norm0..3``, at strides 4/8/16/32; ImageNet weights with smaller focal windows or
fewer focal levels load into it by zero-padding.
"""

from __future__ import annotations

import logging

import pytest
import torch

from focalbench.models import FocalNetBackbone, TimmBackbone, build_backbone, create_model, save_safetensors

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"embed_dim": 8, "depths": (1, 1, 2, 1)}


def randomise_norms(backbone: torch.nn.Module) -> None:
    """The per-stage norms start at 1/0: move them so that a norm applied to the wrong map shows."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for i in range(4):
            norm = getattr(backbone, f"norm{i}")
            norm.weight.copy_(1 + 0.3 * torch.randn(norm.weight.shape, generator=generator))
            norm.bias.copy_(0.3 * torch.randn(norm.bias.shape, generator=generator))


# ---------------------------------------------------------------------------------------------- create_model


def test_create_model_applies_overrides_and_names_its_variant():
    model = create_model("focalnet_tiny_lrf", num_classes=7, drop_path_rate=0.0, focal_windows=5, **TINY)
    assert model.variant.name == "focalnet_tiny_lrf" and model.num_classes == 7
    assert model.focal_levels == [3, 3, 3, 3] and model.focal_windows == [5, 5, 5, 5]
    assert model.layers[2].blocks[1].modulation.kernel_sizes == [5, 7, 9]
    assert all(isinstance(m.drop_path, torch.nn.Identity) for stage in model.layers for m in stage.blocks)


def test_unknown_names():
    with pytest.raises(ValueError, match=r"Unknown FocalNet variant 'focalnet_tiny_srff'\. Did you mean"):
        create_model("focalnet_tiny_srff")
    with pytest.raises(ValueError, match=r"Unknown FocalNet variant 'no_such_net'.*Known variants: focalnet_tiny_srf"):
        build_backbone("no_such_net")  # neither a FocalNet variant nor in timm's registry
    with pytest.raises(ValueError, match=r"focal_windows has 2 entries, expected one per stage \(4\)"):
        create_model("focalnet_tiny_srf", focal_windows=(3, 9))


# ------------------------------------------------------------------------------------ FocalNet backbone


def test_backbone_levels_and_inputs_not_divisible_by_32():
    backbone = build_backbone("focalnet_tiny_srf", **TINY).eval()
    assert isinstance(backbone, FocalNetBackbone)
    assert backbone.strides == [4, 8, 16, 32] and backbone.out_channels == [8, 16, 32, 64]  # C, 2C, 4C, 8C
    x = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        features = backbone(x)
        padded = backbone(torch.nn.functional.pad(x, (0, 26, 0, 14)))  # zero-padded to 64 x 96 on the right/bottom
    assert [tuple(f.shape) for f in features] == [(1, 8, 16, 24), (1, 16, 8, 12), (1, 32, 4, 6), (1, 64, 2, 3)]
    for f, p in zip(features, padded):
        assert torch.equal(f, p)
    subset = build_backbone("focalnet_tiny_srf", out_indices=(1, 3), **TINY)
    assert subset.strides == [8, 32] and subset.out_channels == [16, 64] and len(subset(x)) == 2


def test_negative_levels_count_from_the_deepest_and_load_a_checkpoint_of_every_level(tmp_path, caplog):
    # DINO-4scale's backbone returns strides 8-32 only; a dense checkpoint with all four output norms still loads.
    torch.manual_seed(0)
    every = build_backbone("focalnet_tiny_srf", **TINY).eval()
    randomise_norms(every)
    path = save_safetensors(every, tmp_path / "dense.safetensors")
    with caplog.at_level(logging.WARNING, logger="focalbench.models.checkpoints"):
        deepest = build_backbone("focalnet_tiny_srf", out_indices=(-3, -2, -1), pretrained=path, **TINY).eval()
    assert deepest.strides == [8, 16, 32] and not hasattr(deepest, "norm0")
    assert "output norms of levels the model does not return dropped" in caplog.text
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(deepest(x), every(x)[1:], strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("focalnet_tiny_srf", {}),
        # the overlapping embedding of the large models; timm's stem pads by 2, the official dense stem by 3
        ("focalnet_large_fl3", {"stem_padding": 2}),
    ],
)
def test_backbone_outputs_are_timm_stage_outputs_before_downsampling_through_norms(name, overrides, tmp_path):
    import timm.models.focalnet as timm_focalnet

    flags = {}
    if "large" in name:  # large_fl3's flags; LayerScale 1 (not 1e-4) so that every block counts in the comparison
        flags = {"use_overlap_down": True, "use_post_norm": True, "layerscale_value": 1.0}
        flags.update(focal_levels=(3,) * 4, focal_windows=(5,) * 4)
    torch.manual_seed(0)
    reference = timm_focalnet.FocalNet(**TINY, **flags, num_classes=10).eval()  # a classifier checkpoint
    torch.save(reference.state_dict(), tmp_path / "timm.pth")
    backbone = build_backbone(name, pretrained=tmp_path / "timm.pth", **TINY, **overrides).eval()
    randomise_norms(backbone)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours = backbone(x)
        # timm downsamples at the START of stage i+1, so its stage i output is ours before our downsampling
        stages = reference.forward_intermediates(x, intermediates_only=True)
        assert [s.shape[1] for s in stages] == backbone.out_channels
        for i, (a, b) in enumerate(zip(ours, stages)):
            torch.testing.assert_close(a, getattr(backbone, f"norm{i}")(b), rtol=1e-5, atol=1e-5)


def test_larger_focal_window_loads_by_zero_padding_and_computes_the_same(tmp_path, caplog):
    torch.manual_seed(0)
    window3 = build_backbone("focalnet_tiny_srf", **TINY).eval()
    path = save_safetensors(window3, tmp_path / "w3.safetensors")
    with caplog.at_level(logging.WARNING, logger="focalbench.models.checkpoints"):
        window9 = build_backbone("focalnet_tiny_srf", focal_windows=9, pretrained=path, **TINY).eval()
    assert "depth-wise kernels zero-padded" in caplog.text
    kernel = window9.layers[0].blocks[0].modulation.focal_layers[1][0].weight  # level 2: 5x5 -> 11x11
    assert kernel.shape[-2:] == (11, 11) and kernel[..., 3:8, 3:8].abs().sum() > 0
    assert kernel.abs().sum() == kernel[..., 3:8, 3:8].abs().sum()  # nothing outside the centred 5x5
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(window9(x), window3(x)):
            assert torch.equal(a, b)  # the padded weights are exact zeros


def test_more_focal_levels_load_with_new_zero_gates(tmp_path, caplog):
    srf = build_backbone("focalnet_tiny_srf", **TINY)
    path = save_safetensors(srf, tmp_path / "srf.safetensors")
    with caplog.at_level(logging.WARNING, logger="focalbench.models.checkpoints"):
        lrf = build_backbone("focalnet_tiny_lrf", pretrained=path, **TINY)
    assert "extra focal levels added with zero gates" in caplog.text
    old, new = srf.layers[1].blocks[0].modulation, lrf.layers[1].blocks[0].modulation
    # f's rows: q (C), context (C), one gate per level, the global gate last
    assert new.f.weight.shape[0] == old.f.weight.shape[0] + 1
    assert torch.equal(new.f.weight[:-2], old.f.weight[:-1]) and torch.equal(new.f.bias[:-2], old.f.bias[:-1])
    assert torch.equal(new.f.weight[-1], old.f.weight[-1]) and torch.equal(new.f.bias[-1], old.f.bias[-1])
    assert not new.f.weight[-2].any() and not new.f.bias[-2].any()  # the new level's gate starts closed
    for level in range(2):
        assert torch.equal(new.focal_layers[level][0].weight, old.focal_layers[level][0].weight)


# -------------------------------------------------------------------------------------------- timm backbones


@pytest.mark.parametrize(
    ("name", "kwargs", "channels"),
    [
        ("resnet18", {}, [64, 128, 256, 512]),
        ("convnext_atto", {}, [40, 80, 160, 320]),
        ("swin_tiny_patch4_window7_224", {"img_size": 64, "window_size": 2}, [96, 192, 384, 768]),  # NHWC in timm
    ],
)
def test_timm_backbones_give_nchw_levels_as_advertised(name, kwargs, channels):
    backbone = build_backbone(name, **kwargs).eval()
    assert isinstance(backbone, TimmBackbone) and backbone.strides == [4, 8, 16, 32]
    assert backbone.out_channels == channels  # the models' published stage widths
    with torch.no_grad():
        features = backbone(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == backbone.out_channels
    assert [64 // f.shape[-2] for f in features] == [64 // f.shape[-1] for f in features] == backbone.strides
