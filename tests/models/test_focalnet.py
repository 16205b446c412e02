"""The FocalNet classifier and the variant registry: every variant builds and runs, the full-size models compute
timm's function, parameter counts match the paper, and the timm verbs (heads, layer decay, checkpointing) behave.

Layout conversions at reduced size, for every variant, are in ``test_checkpoints.py``.
"""

from __future__ import annotations

import pytest
import timm
import torch
from timm.models import group_parameters
from timm.optim import param_groups_layer_decay

from focalbench.models import VARIANTS, FocalNet, create_model, get_variant, list_variants, load_into, pointwise
from focalbench.models.checkpoints import to_focalbench

pytestmark = pytest.mark.usefixtures("one_thread")

TIMM_VARIANTS = [name for name in VARIANTS if name in timm.list_models("focalnet_*")]
PAPER_VARIANTS = [name for name, v in VARIANTS.items() if "params_m" in v.paper]


def reduced(name: str) -> dict:
    """Width 16 and one or two blocks per stage; every other argument (flags, levels, windows) of the variant."""
    depths = VARIANTS[name].kwargs["depths"]
    return {"embed_dim": 16, "depths": (1,) * (len(depths) - 1) + (2,)}


def like_timm(name: str) -> dict:
    """timm omits the official ``normalize_modulator=True`` of large_fl4 (see variants.py): compare like with like."""
    return {"normalize_modulator": False} if name == "focalnet_large_fl4" else {}


# ------------------------------------------------------------------------------------------------ registry


def test_registry_covers_every_timm_focalnet():
    assert len(TIMM_VARIANTS) == 12 and set(timm.list_models("focalnet_*")) <= set(list_variants())


def test_unknown_variant_lists_the_known_ones_and_suggests_the_closest():
    expected = (
        r"'focalnet_tiny_srff'\. Did you mean 'focalnet_tiny_srf'\? Known variants: focalnet_tiny_srf, .*_huge_fl4"
    )
    with pytest.raises(ValueError, match=r"Unknown FocalNet variant " + expected):
        get_variant("focalnet_tiny_srff")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_builds_and_classifies(name):
    model = create_model(name, num_classes=10, **reduced(name)).eval()
    assert isinstance(model, FocalNet) and model.variant is VARIANTS[name]
    stride = model.strides[-1]
    x = torch.randn(2, 3, 2 * stride, 3 * stride)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, model.num_features, 2, 3)
        assert model.forward_head(features, pre_logits=True).shape == (2, model.num_features)
        assert model(x).shape == (2, 10)
        model.reset_classifier(4)
        assert model.get_classifier().out_features == 4 and model(x).shape == (2, 4)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)


@pytest.mark.parametrize("name", PAPER_VARIANTS)
def test_parameter_counts_match_the_paper(name):
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        model = create_model(name)
    params = sum(p.numel() for p in model.parameters())
    # The paper prints millions to one decimal, so equality after the same rounding is the exact check; a relative
    # bound like 0.1 % cannot be literal: FocalNet-T LRF has 28.648M parameters and the paper prints 28.6.
    assert round(params / 1e6, 1) == VARIANTS[name].paper["params_m"]


# ---------------------------------------------------------------------------------------- timm, full size


def assert_same_as_timm(name: str, size: int, tmp_path) -> None:
    """``timm.create_model(name)`` at full size, its state dict saved to a file and loaded into ours."""
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        expected = reference(x)
    torch.save(reference.state_dict(), tmp_path / "timm.pth")
    num_classes = reference.num_classes
    del reference  # the huge models are 3 GB each
    with torch.device("meta"):  # every tensor is overwritten by the load, so skip the initialisation
        ours = create_model(name, num_classes=num_classes, **like_timm(name))
    ours = ours.to_empty(device="cpu").eval()
    load_into(ours, tmp_path / "timm.pth")
    with torch.no_grad():
        torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["focalnet_tiny_srf", "focalnet_tiny_lrf"])
def test_full_size_tiny_equals_timm(name, tmp_path):
    assert_same_as_timm(name, 224, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in TIMM_VARIANTS if "tiny" not in n])
def test_full_size_equals_timm(name, tmp_path):
    assert_same_as_timm(name, 64, tmp_path)  # full width and depth; a small input keeps the run short


# ------------------------------------------------------------------------------------------- timm verbs


@pytest.mark.parametrize("coarse", [False, True])
def test_layer_decay_scales_match_timm(coarse):
    """timm's optimizer factory gives every parameter the same lr scale in ours as in timm's model."""
    from timm.models.focalnet import FocalNet as TimmFocalNet

    size = {"embed_dim": 8, "depths": (1, 2, 3, 1)}
    reference, ours = TimmFocalNet(**size), create_model("focalnet_tiny_srf", **size)
    if coarse:  # the stage grouping (layer decay per stage)
        groups = [group_parameters(m, m.group_matcher(coarse=True)) for m in (ours, reference)]
        ours_ids = {name: i for i, names in groups[0].items() for name in names}
        timm_ids = {name: i for i, names in groups[1].items() for name in names}
        assert {to_key(k): v for k, v in timm_ids.items()} == ours_ids
        return

    def scales(model: torch.nn.Module) -> dict[str, float]:
        names = {id(p): n for n, p in model.named_parameters()}
        groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.5)
        return {names[id(p)]: group["lr_scale"] for group in groups for p in group["params"]}

    assert {to_key(k): v for k, v in scales(reference).items()} == scales(ours)


def to_key(timm_key: str) -> str:
    return next(iter(to_focalbench({timm_key: torch.zeros(1)}, layout="timm")))


def test_grad_checkpointing_gives_the_same_loss_and_gradients(monkeypatch):
    torch.manual_seed(0)
    model = create_model("focalnet_tiny_srf", num_classes=3, embed_dim=8, depths=(1, 1, 2, 1)).train()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    calls = []

    def step(checkpointing: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.set_grad_checkpointing(checkpointing)
        model.zero_grad()
        torch.manual_seed(1)  # the same drop-path draws (drop_path_rate 0.1); checkpointing replays the RNG state
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    # PyTorch's convolution for the 1×1 layers in both runs (checkpointing keeps them on it): the same rounding
    monkeypatch.setattr(pointwise, "_enabled", False)
    monkeypatch.setattr(pointwise, "choices", {})
    model.layers[2].blocks[0].modulation.register_forward_hook(lambda *_: calls.append(1))
    loss, grads = step(False)
    assert len(calls) == 1
    loss_ckpt, grads_ckpt = step(True)
    assert len(calls) == 3  # the block ran again in the backward pass: checkpointing is really on
    assert torch.equal(loss_ckpt, loss)
    for a, b in zip(grads_ckpt, grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_backward_stays_channels_last():
    """Every conv and GELU of a block receives its gradient in channels_last, the layout of its forward; a mixed
    layout (the split's and the global pool's backward come out NCHW) sends them down slow paths."""
    model = create_model("focalnet_tiny_srf", num_classes=3, embed_dim=8, depths=(1, 1, 2, 1)).train()
    layouts = {}

    def record(name: str):
        def hook(module, inputs, output):
            output.register_hook(
                lambda grad: layouts.__setitem__(name, grad.is_contiguous(memory_format=torch.channels_last))
            )

        return hook

    for name, module in model.layers[0].blocks[0].named_modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.GELU)) and name != "modulation.act":  # that one is 1x1
            module.register_forward_hook(record(name))
    torch.nn.functional.cross_entropy(model(torch.randn(2, 3, 32, 32)), torch.tensor([0, 2])).backward()
    assert len(layouts) == 10  # f, 2 focal levels x (conv, GELU), h, proj, fc1, GELU, fc2
    assert all(layouts.values()), layouts
    assert model.layers[0].blocks[0].modulation.f.weight.grad is not None


def test_initialisation_follows_the_official_code():
    # Official FocalNet initialises only its nn.Linear layers (f, proj, the MLP; 1×1 convolutions here) with
    # trunc_normal(0.02); the patch embedding, downsampling, depth-wise focal kernels and h keep PyTorch's default
    # kaiming-uniform, U(-1/√fan_in, 1/√fan_in), whose std is 1/√(3·fan_in).
    torch.manual_seed(0)
    model = create_model("focalnet_tiny_srf", embed_dim=32, depths=(1, 1, 1, 1))
    modulation = model.layers[1].blocks[0].modulation  # 64 channels
    for linear in (modulation.f, modulation.proj, model.layers[1].blocks[0].mlp.fc1):
        assert linear.weight.std().item() == pytest.approx(0.02, rel=0.15) and not linear.bias.any()
    for conv, fan_in in ((modulation.focal_layers[0][0], 9), (modulation.h, 64), (model.patch_embed.proj, 48)):
        assert conv.weight.std().item() == pytest.approx((3 * fan_in) ** -0.5, rel=0.15)
        assert conv.weight.abs().max().item() <= fan_in**-0.5
