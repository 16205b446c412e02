"""Mask2Former glue: transformers' model on our backbones (FocalNet and timm), with its shapes, parameters and loss."""

from __future__ import annotations

import pytest
import torch

from focalbench.models import build_backbone
from focalbench.models.mask2former import Mask2Former

SMALL = dict(
    hidden_dim=32,
    num_queries=8,
    decoder_layers=3,
    encoder_layers=1,
    num_attention_heads=2,
    dim_feedforward=64,
    encoder_feedforward_dim=64,
    train_num_points=256,
)


def tiny_backbone(name: str):
    kwargs = dict(embed_dim=8, depths=[1, 1, 1, 1]) if name.startswith("focalnet") else {}
    return build_backbone(name, **kwargs)


def targets():
    g = torch.Generator().manual_seed(0)
    masks = [(torch.rand(2, 64, 48, generator=g) > 0.5).float(), (torch.rand(1, 64, 48, generator=g) > 0.5).float()]
    return masks, [torch.tensor([0, 3]), torch.tensor([4])]


@pytest.mark.parametrize("name", ["focalnet_tiny_lrf", "resnet18"])
def test_shapes_and_cropped_masks(one_thread, name):
    model = Mask2Former(tiny_backbone(name), 5, **SMALL).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 48))  # 48 is padded to 64 (size divisibility 32)
    assert out.class_queries_logits.shape == (2, 8, 6)  # 5 classes + "no object"
    assert out.masks_queries_logits.shape == (2, 8, 16, 16)  # stride 4 of the padded 64 x 64 input
    assert Mask2Former.mask_logits(out, (64, 48)).shape == (2, 8, 64, 48)


@pytest.mark.parametrize("name", ["focalnet_tiny_lrf", "resnet18"])
def test_backbone_is_the_encoder_and_keeps_its_weights(one_thread, name):
    backbone = tiny_backbone(name)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    model = Mask2Former(backbone, 5, **SMALL).eval()
    assert model.backbone is backbone
    # transformers' weight init did not touch the backbone (pretrained weights survive the build)
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    # the pixel decoder built for our channels was initialised (level embeddings ~ N(0, 1), not left empty)
    decoder = model.net.model.pixel_level_module.decoder
    assert decoder.input_projections[0][0].in_channels == backbone.out_channels[-1]
    assert 0.3 < decoder.level_embed.std().item() < 3.0
    # our parameter names under one prefix: a state dict of the backbone alone maps onto the model's
    keys = {k for k in model.state_dict() if k.startswith("net.model.pixel_level_module.encoder.backbone.")}
    assert len(keys) == len(backbone.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = model(x).masks_queries_logits.clone()
        first = next(p for p in backbone.parameters() if p.dim() > 1)
        first.add_(0.5)
        assert not torch.allclose(model(x).masks_queries_logits, reference)


def test_loss_backward_reaches_the_backbone(one_thread):
    backbone = tiny_backbone("focalnet_tiny_lrf")
    model = Mask2Former(backbone, 5, **SMALL)
    masks, classes = targets()
    out = model(torch.randn(2, 3, 64, 48), masks, classes)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in backbone.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    heads = [p for m in model.head_modules() for p in m.parameters()]
    assert len(heads) + len(list(backbone.parameters())) == len(list(model.parameters()))
