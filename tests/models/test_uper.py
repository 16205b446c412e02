import pytest
import torch
from torch import nn

from focalbench.models import build_backbone
from focalbench.models.heads import PPM, FCNHead, UPerHead, UPerNet

NUM_CLASSES = 5


def _tiny_focalnet() -> nn.Module:
    return build_backbone("focalnet_tiny_srf", embed_dim=8, depths=(1, 1, 1, 1), focal_windows=9)


def _resnet18() -> nn.Module:
    # timm feature index 0 is the stride-2 stem; the stride 4..32 stages are 1..4.
    return build_backbone("resnet18", out_indices=(1, 2, 3, 4))


BACKBONES = {"focalnet": _tiny_focalnet, "resnet18": _resnet18}


@pytest.fixture(scope="module", params=list(BACKBONES))
def model(request) -> UPerNet:
    torch.manual_seed(0)
    return UPerNet(BACKBONES[request.param](), NUM_CLASSES, channels=16, aux_channels=8)


@pytest.mark.parametrize("size", [(64, 64), (50, 70)])
def test_output_shapes(model: UPerNet, size: tuple[int, int]) -> None:
    images = torch.randn(2, 3, *size)
    model.train()
    out = model(images)
    assert set(out) == {"out", "aux"}
    assert out["out"].shape == (2, NUM_CLASSES, *size)
    assert out["aux"].shape == (2, NUM_CLASSES, *size)
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert set(out) == {"out"}
    assert out["out"].shape == (2, NUM_CLASSES, *size)


def test_heads_sized_from_backbone(model: UPerNet) -> None:
    channels = list(model.backbone.out_channels)
    assert model.strides == [4, 8, 16, 32]
    assert model.decode_head.in_channels == channels
    assert model.auxiliary_head.in_channels == channels[2]
    assert [c.in_channels for c in (m[0] for m in model.decode_head.lateral_convs)] == channels[:-1]


def test_gradients_reach_backbone_and_heads(model: UPerNet) -> None:
    model.train()
    model.zero_grad()
    out = model(torch.randn(2, 3, 64, 64))
    target = torch.randint(0, NUM_CLASSES, (2, 64, 64))
    loss = nn.functional.cross_entropy(out["out"], target) + 0.4 * nn.functional.cross_entropy(out["aux"], target)
    loss.backward()
    for name, module in [("backbone", model.backbone), ("decode", model.decode_head), ("aux", model.auxiliary_head)]:
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert grads and all(g is not None for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name


def test_ppm_handles_2x2_map() -> None:
    ppm = PPM(8, 4, (1, 2, 3, 6)).train()
    outs = ppm(torch.randn(2, 8, 2, 2))
    assert [o.shape for o in outs] == [torch.Size([2, 4, 2, 2])] * 4
    head = UPerHead([4, 8], 3, channels=4).train()
    logits = head([torch.randn(2, 4, 4, 4), torch.randn(2, 8, 2, 2)])
    assert logits.shape == (2, 3, 4, 4)


def test_head_constructors_and_without_aux() -> None:
    head = FCNHead(12, 3, channels=6)
    assert head(torch.randn(2, 12, 5, 7)).shape == (2, 3, 5, 7)
    assert head.convs[0].kernel_size == (3, 3) and head.convs[0].bias is None
    model = UPerNet(_tiny_focalnet(), 3, channels=8, aux_index=None).train()
    assert model.auxiliary_head is None
    assert set(model(torch.randn(2, 3, 32, 32))) == {"out"}


def test_convert_sync_batchnorm_converts_all() -> None:
    model = UPerNet(_tiny_focalnet(), 3, channels=8, aux_channels=4)
    num_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert num_bn == 4 + 1 + 3 + 3 + 1 + 1  # PPM, bottleneck, laterals, fpn convs, fpn bottleneck, aux
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in converted.modules()) == num_bn
    assert not any(type(m) is nn.BatchNorm2d for m in converted.modules())


def test_logits_aligned_with_unpadded_input(model: UPerNet) -> None:
    # The backbone zero-pads 50x70 to 64x96: the logits must be the padded input's logits, cropped (not stretched).
    model.eval()
    images = torch.randn(1, 3, 50, 70)
    with torch.no_grad():
        out = model(images)["out"]
        padded = model(nn.functional.pad(images, (0, 26, 0, 14)))["out"]
    torch.testing.assert_close(out, padded[:, :, :50, :70])
