"""Loading weights as users do, the errors they get, and the dense-task backbone built from the same weights."""

from __future__ import annotations

import logging

import pytest
import torch
import torchvision

from focalbench.models import (
    CheckpointError,
    build_backbone,
    create_model,
    get_variant,
    load_into,
    save_safetensors,
)

TINY = {"embed_dim": 8, "depths": (1, 1, 2, 1)}


def _saved(tmp_path, model, name="w.safetensors"):
    return save_safetensors(model, tmp_path / name)


def test_unknown_variant_lists_names_and_suggests_the_closest():
    with pytest.raises(
        ValueError,
        match=r"Unknown FocalNet variant 'focalnet_tiny_srff'\. Did you mean 'focalnet_tiny_srf'\?.*focalnet_huge_fl4",
    ):
        get_variant("focalnet_tiny_srff")
    with pytest.raises(ValueError, match="Did you mean"):
        create_model("focalnet_tiny_srff")


def test_checkpoint_of_another_architecture(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="not a FocalNet checkpoint"):
        load_into(create_model("focalnet_tiny_srf", **TINY), tmp_path / "resnet.pth")


def test_checkpoint_of_another_variant_names_keys_and_implied_architecture(tmp_path):
    small = create_model("focalnet_small_srf", embed_dim=8, depths=(1, 1, 4, 1))
    path = _saved(tmp_path, small)
    with pytest.raises(CheckpointError, match=r"depths=\(1, 1, 4, 1\).*not in the model \(\d+\): layers\.2\.blocks\.2"):
        load_into(create_model("focalnet_tiny_srf", **TINY), path)


def test_offline_hub_id_says_how_to_use_a_local_file(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(FileNotFoundError, match=r"hub id 'timm/focalnet_tiny_srf\.ms_in1k'.*pass its local path"):
        create_model("focalnet_tiny_srf", pretrained="timm/focalnet_tiny_srf.ms_in1k")


def test_missing_local_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        create_model("focalnet_tiny_srf", **TINY, pretrained=str(tmp_path / "nope.pth"))


def test_head_of_another_size_is_dropped_with_a_warning(tmp_path, caplog):
    source = create_model("focalnet_tiny_srf", num_classes=1000, **TINY)
    path = _saved(tmp_path, source)
    with caplog.at_level(logging.WARNING):
        target = create_model("focalnet_tiny_srf", num_classes=5, pretrained=str(path), **TINY)
    assert "classifier head dropped (1000 classes in the file, 5 in the model)" in caplog.text
    torch.testing.assert_close(target.layers[2].blocks[1].mlp.fc1.weight, source.layers[2].blocks[1].mlp.fc1.weight)
    assert target.head.weight.shape == (5, 64)


def test_in22k_head_keeps_the_in1k_rows(tmp_path):
    source = create_model("focalnet_tiny_srf", num_classes=21842, **TINY)
    target = create_model("focalnet_tiny_srf", num_classes=1000, pretrained=str(_saved(tmp_path, source)), **TINY)
    torch.testing.assert_close(target.head.weight, source.head.weight[:1000])


def test_lightning_checkpoint_and_safetensors_round_trip(tmp_path):
    model = create_model("focalnet_tiny_lrf", num_classes=3, **TINY).eval()
    path = _saved(tmp_path, model)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # nothing half-written left behind
    wrapped = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "last.ckpt")
    x = torch.randn(1, 3, 32, 32)
    for source in (path, tmp_path / "last.ckpt"):
        copy = create_model("focalnet_tiny_lrf", num_classes=3, pretrained=str(source), **TINY).eval()
        with torch.no_grad():
            torch.testing.assert_close(copy(x), model(x))


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = create_model("focalnet_tiny_srf", num_classes=3, drop_path_rate=0.0, **TINY)
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for a, p in zip(plain, model.parameters()):
        torch.testing.assert_close(p.grad, a)


# ------------------------------------------------------------------------------------------ dense backbone


def test_backbone_shapes_and_padding():
    backbone = build_backbone("focalnet_tiny_srf", **TINY)
    assert backbone.strides == [4, 8, 16, 32] and backbone.out_channels == [8, 16, 32, 64]
    features = backbone(torch.randn(1, 3, 50, 70))  # padded to 64 x 96
    assert [tuple(f.shape[1:]) for f in features] == [(8, 16, 24), (16, 8, 12), (32, 4, 6), (64, 2, 3)]


def test_backbone_outputs_are_stage_outputs_before_downsampling_through_norms(tmp_path):
    from timm.models.focalnet import FocalNet as TimmFocalNet

    torch.manual_seed(0)
    reference = TimmFocalNet(num_classes=0, **TINY).eval()
    torch.save(reference.state_dict(), tmp_path / "timm.pth")
    backbone = build_backbone("focalnet_tiny_srf", pretrained=str(tmp_path / "timm.pth"), **TINY).eval()
    with torch.no_grad():
        for i in range(4):  # per-stage norms: make them identities to compare with timm's raw stage outputs
            norm = getattr(backbone, f"norm{i}")
            norm.weight.fill_(1), norm.bias.zero_()
        x = torch.randn(1, 3, 64, 64)
        ours = backbone(x)
        # timm downsamples at the START of the next stage, so its stage i output is ours before downsampling
        stages = reference.forward_intermediates(x, intermediates_only=True)
        for a, b in zip(ours, stages):
            normed = torch.nn.functional.layer_norm(b.permute(0, 2, 3, 1), b.shape[1:2], eps=1e-5).permute(0, 3, 1, 2)
            torch.testing.assert_close(a, normed, rtol=1e-5, atol=1e-5)


def test_larger_focal_window_loads_by_zero_padding_and_computes_the_same(tmp_path):
    torch.manual_seed(0)
    small_window = build_backbone("focalnet_tiny_srf", **TINY).eval()
    path = _saved(tmp_path, small_window)
    nine = build_backbone("focalnet_tiny_srf", focal_windows=9, pretrained=str(path), **TINY).eval()
    kernel = nine.layers[0].blocks[0].modulation.focal_layers[0][0].weight
    assert kernel.shape[-1] == 9 and kernel[..., 0, :].abs().sum() == 0  # zero ring around the 3x3 centre
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(nine(x), small_window(x)):
            torch.testing.assert_close(a, b)


def test_more_focal_levels_load_with_zero_gates(tmp_path, caplog):
    srf = build_backbone("focalnet_tiny_srf", **TINY)
    with caplog.at_level(logging.WARNING):
        lrf = build_backbone("focalnet_tiny_lrf", pretrained=str(_saved(tmp_path, srf)), **TINY)
    assert "extra focal levels added with zero gates" in caplog.text
    f_old = srf.layers[1].blocks[0].modulation.f.weight
    f_new = lrf.layers[1].blocks[0].modulation.f.weight
    assert f_new.shape[0] == f_old.shape[0] + 1
    torch.testing.assert_close(f_new[: f_old.shape[0] - 1], f_old[:-1])  # q, context, gates 1..L
    torch.testing.assert_close(f_new[-1], f_old[-1])  # the global gate stays last
    assert f_new[-2].abs().sum() == 0  # the new level's gate starts closed


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto"])
def test_timm_backbones_share_the_interface(name):
    backbone = build_backbone(name)
    features = backbone(torch.randn(1, 3, 64, 64))
    assert backbone.strides == [4, 8, 16, 32]
    assert [f.shape[1] for f in features] == backbone.out_channels
    assert [64 // f.shape[-1] for f in features] == backbone.strides


def test_swin_backbone_returns_nchw():
    backbone = build_backbone("swin_tiny_patch4_window7_224", img_size=64, window_size=2)
    features = backbone(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in features] == backbone.out_channels == [96, 192, 384, 768]
    assert [64 // f.shape[-1] for f in features] == [4, 8, 16, 32]


def test_unknown_backbone_name():
    with pytest.raises(ValueError, match="Unknown FocalNet variant 'no_such_net'"):
        build_backbone("no_such_net")  # neither a FocalNet variant nor in timm's registry
