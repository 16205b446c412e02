"""Our FocalNet computes the reference implementations' function, from every checkpoint layout.

Random weights, fp32, eval. Reduced sizes (all of a variant's flags kept) run by default; full sizes of the big
variants are ``slow``.
"""

from __future__ import annotations

import re

import pytest
import timm
import torch

from focalbench.models import VARIANTS, create_model, load_into, save_safetensors

TIMM_VARIANTS = [name for name in VARIANTS if not name.endswith("_iso")]  # timm registers no isotropic model
REDUCED = {"embed_dim": 16, "depths": (1, 1, 2, 1)}


def _overrides_for_timm(name: str) -> dict:
    # timm omits the official large_fl4 normalize_modulator=True (see variants.py): compare like with like
    return {"normalize_modulator": False} if name == "focalnet_large_fl4" else {}


def _timm_model(name: str, reduced: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    if not reduced:
        return timm.create_model(name, pretrained=False).eval()
    # timm's registered constructors fix embed_dim/depths, so build its class with the variant's flags
    from timm.models.focalnet import FocalNet as TimmFocalNet

    ours = VARIANTS[name].kwargs
    flags = {
        "focal_levels": [ours["focal_levels"]] * 4,
        "focal_windows": [ours["focal_windows"]] * 4,
        "use_overlap_down": ours.get("use_overlap_embed", False),
        "use_post_norm": ours.get("use_post_norm", False),
        "use_post_norm_in_modulation": ours.get("use_post_norm_in_modulation", False),
        "layerscale_value": ours.get("layerscale_value"),
    }
    return TimmFocalNet(num_classes=10, **REDUCED, **flags).eval()


def _randomise_norms_and_scales(model: torch.nn.Module) -> None:
    """LayerScale γ starts at 1e-4 and norms at 1/0: move them so a mis-mapped one shows in the logits."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "gamma" in name:
                param.normal_(0, 1)
            elif param.ndim == 1 and "norm" in name:
                param.normal_(1 if name.endswith("weight") else 0, 0.3)


@pytest.mark.parametrize("name", TIMM_VARIANTS)
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_layout_reduced(name, suffix, tmp_path):
    reference = _timm_model(name, reduced=True)
    _randomise_norms_and_scales(reference)
    path = tmp_path / f"timm{suffix}"
    if suffix == ".pth":
        torch.save(reference.state_dict(), path)
    else:
        save_safetensors(reference, path)
    ours = create_model(name, num_classes=10, **REDUCED, **_overrides_for_timm(name)).eval()
    assert load_into(ours, path)["layout"] == "timm"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)


def test_large_fl4_normalize_modulator_differs_from_timm(tmp_path):
    reference = _timm_model("focalnet_large_fl4", reduced=True)
    _randomise_norms_and_scales(reference)
    torch.save(reference.state_dict(), tmp_path / "w.pth")
    official = create_model("focalnet_large_fl4", num_classes=10, **REDUCED).eval()  # normalize_modulator=True
    load_into(official, tmp_path / "w.pth")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(official(x), reference(x), atol=1e-4)


@pytest.mark.parametrize("name", ["focalnet_tiny_srf", "focalnet_tiny_lrf"])
def test_timm_layout_full_size_tiny(name, tmp_path):
    reference = _timm_model(name, reduced=False)
    torch.save(reference.state_dict(), tmp_path / "w.pth")
    ours = create_model(name).eval()
    load_into(ours, tmp_path / "w.pth")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in TIMM_VARIANTS if "tiny" not in n])
def test_timm_layout_full_size(name, tmp_path):
    reference = _timm_model(name, reduced=False)
    torch.save(reference.state_dict(), tmp_path / "w.pth")
    classes = reference.num_classes
    ours = create_model(name, num_classes=classes, **_overrides_for_timm(name)).eval()
    load_into(ours, tmp_path / "w.pth")
    size = 64  # full width and depth; a small input keeps the run short
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        expected, actual = reference.forward_features(x), ours.forward_features(x)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    del reference, ours


def _timm_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official key names, written out here independently of focalbench's converter."""
    out = {}
    for key, value in state.items():
        key = key.replace("stem.", "patch_embed.") if key.startswith("stem.") else key
        key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        key = key.replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2")
        key = (
            key.replace("norm1_post", "norm1")
            .replace("norm2_post", "norm2")
            .replace("modulation.norm", "modulation.ln")
        )
        key = key.replace("head.fc.", "head.")
        pointwise = re.search(r"modulation\.(f|proj)\.weight$|mlp\.fc[12]\.weight$", key)
        out[key] = value.flatten(1) if pointwise and value.ndim == 4 else value  # Linear; `h` stays a 1x1 conv
    return out


@pytest.mark.parametrize("name", ["focalnet_tiny_srf", "focalnet_large_fl3", "focalnet_huge_fl4"])
def test_official_layout(name, tmp_path):
    reference = _timm_model(name, reduced=True)
    _randomise_norms_and_scales(reference)
    official = _timm_to_official(reference.state_dict())
    assert official["layers.0.blocks.0.modulation.f.weight"].ndim == 2
    torch.save({"model": official}, tmp_path / "official.pth")
    ours = create_model(name, num_classes=10, **REDUCED, **_overrides_for_timm(name)).eval()
    assert load_into(ours, tmp_path / "official.pth")["layout"] == "official"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)


HF_SUPPORTED = ["focalnet_tiny_srf", "focalnet_small_lrf", "focalnet_large_fl4", "focalnet_huge_fl3"]


@pytest.mark.parametrize("name", HF_SUPPORTED)
def test_hugging_face_layout(name, tmp_path):
    transformers = pytest.importorskip("transformers")
    kwargs = VARIANTS[name].kwargs
    config = transformers.FocalNetConfig(
        embed_dim=16,
        depths=[1, 1, 2, 1],
        hidden_sizes=[32, 64, 128, 128],
        focal_levels=[kwargs["focal_levels"]] * 4,
        focal_windows=[kwargs["focal_windows"]] * 4,
        use_conv_embed=kwargs.get("use_overlap_embed", False),
        use_layerscale=kwargs.get("layerscale_value") is not None,
        layerscale_value=kwargs.get("layerscale_value") or 1e-4,
        use_post_layernorm=kwargs.get("use_post_norm", False),
        use_post_layernorm_in_modulation=kwargs.get("use_post_norm_in_modulation", False),
        normalize_modulator=kwargs.get("normalize_modulator", False),
        num_labels=10,
        image_size=64,
    )
    torch.manual_seed(0)
    reference = transformers.FocalNetForImageClassification(config).eval()
    _randomise_norms_and_scales(reference)
    reference.save_pretrained(tmp_path / "hf")  # model.safetensors, as on the hub
    ours = create_model(name, num_classes=10, **REDUCED).eval()
    assert load_into(ours, tmp_path / "hf" / "model.safetensors")["layout"] == "hf"
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in VARIANTS if VARIANTS[n].paper.get("params_m")])
def test_parameter_counts_match_the_paper(name):
    with torch.device("meta"):
        model = create_model(name)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    # The paper prints millions to one decimal (28.648M is "28.6"), so equality after rounding is the exact check.
    assert round(params, 1) == VARIANTS[name].paper["params_m"]
