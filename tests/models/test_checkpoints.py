"""Every checkpoint layout loads into our FocalNet and computes the reference's logits; bad files fail clearly.

References: timm (``timm.create_model`` of each registered variant), Hugging Face ``FocalNetForImageClassification``
and the official layout written out here independently of ``focalbench.models.checkpoints``. Random weights, fp32,
eval, reduced sizes with every flag of the variant kept; the full-size checks live in ``test_focalnet.py``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import timm
import torch
import torchvision

from focalbench.errors import FocalbenchError
from focalbench.models import VARIANTS, CheckpointError, create_model, load_into, save_safetensors
from focalbench.models.checkpoints import describe, matching_variants

pytestmark = pytest.mark.usefixtures("one_thread")

TIMM_VARIANTS = [name for name in VARIANTS if name in timm.list_models("focalnet_*")]  # no isotropic ones in timm
HF_VARIANTS = [name for name, v in VARIANTS.items() if len(v.kwargs["depths"]) == 4]  # transformers: 4 stages only
REDUCED = {"embed_dim": 16, "depths": (1, 1, 2, 1)}
TINY = {"embed_dim": 8, "depths": (1, 1, 2, 1)}
X = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def like_timm(name: str) -> dict:
    """timm omits the official ``normalize_modulator=True`` of large_fl4 (see variants.py): compare like with like."""
    return {"normalize_modulator": False} if name == "focalnet_large_fl4" else {}


def timm_reduced(name: str, monkeypatch: pytest.MonkeyPatch) -> torch.nn.Module:
    """``timm.create_model(name)`` with REDUCED width and depth: every other argument comes from timm's own
    registration of the variant, so our registry's flags are checked against timm's, not copied from ours."""
    import timm.models.focalnet as timm_focalnet

    build = timm_focalnet.build_model_with_cfg
    monkeypatch.setattr(
        timm_focalnet, "build_model_with_cfg", lambda *args, **kwargs: build(*args, **{**kwargs, **REDUCED})
    )
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    randomise_vectors(model)
    return model


def randomise_vectors(model: torch.nn.Module) -> None:
    """LayerScale γ starts at 1e-4, norms at 1/0 and biases at 0: move them so a misplaced one shows in the logits."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1:
                mean = 1.0 if ("norm" in name or "layernorm" in name) and name.endswith("weight") else 0.0
                scale = 1.0 if "gamma" in name else 0.3
                param.copy_(mean + scale * torch.randn(param.shape, generator=generator))


def assert_same_logits(ours: torch.nn.Module, reference: torch.nn.Module, x: torch.Tensor = X) -> None:
    with torch.no_grad():
        expected = reference(x)
        expected = getattr(expected, "logits", expected)  # transformers returns an output object
        torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ layouts


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("name", TIMM_VARIANTS)
def test_timm_layout(name, suffix, tmp_path, monkeypatch):
    reference = timm_reduced(name, monkeypatch)
    path = tmp_path / f"timm{suffix}"
    if suffix == ".pth":
        torch.save(reference.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(reference.state_dict(), str(path))
    ours = create_model(name, num_classes=10, **REDUCED, **like_timm(name)).eval()
    assert load_into(ours, path)["layout"] == "timm"
    assert_same_logits(ours, reference)


def test_large_fl4_normalize_modulator_is_where_timm_differs(tmp_path, monkeypatch):
    """Our registry follows the official config (normalize_modulator=True); timm's large_fl4 leaves it False, so
    the same weights compute another function unless the override is passed. The post-norm after the modulation
    cancels most of the 1/(L+1) scale; what remains comes through the biases of ``h`` and ``proj``: small, but far
    outside the parity tolerance."""
    assert VARIANTS["focalnet_large_fl4"].kwargs["normalize_modulator"] is True
    reference = timm_reduced("focalnet_large_fl4", monkeypatch)
    torch.save(reference.state_dict(), tmp_path / "w.pth")
    official = create_model("focalnet_large_fl4", num_classes=10, **REDUCED).eval()
    load_into(official, tmp_path / "w.pth")
    with torch.no_grad():
        difference = (official.forward_features(X) - reference.forward_features(X)).abs().max()
    assert difference > 1e-4  # the parity tests hold to 1e-5


def timm_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official key names and shapes, written out here independently of focalbench's converter."""
    out = {}
    for key, value in state.items():
        key = re.sub(r"^stem\.", "patch_embed.", key)
        key = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) - 1}.downsample", key)
        key = key.replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2")
        key = key.replace("norm1_post", "norm1").replace("norm2_post", "norm2")
        key = key.replace("modulation.norm", "modulation.ln")
        key = re.sub(r"^head\.fc\.", "head.", key)
        linear = re.search(r"(modulation\.(f|proj)|mlp\.fc[12])\.weight$", key)  # `h` stays a [C, C, 1, 1] conv
        out[key] = value.flatten(1) if linear else value
    return out


@pytest.mark.parametrize("name", TIMM_VARIANTS)
def test_official_layout(name, tmp_path, monkeypatch):
    reference = timm_reduced(name, monkeypatch)
    official = timm_to_official(reference.state_dict())
    assert official["layers.0.blocks.0.modulation.f.weight"].ndim == 2
    assert official["layers.0.blocks.0.modulation.h.weight"].ndim == 4
    torch.save({"model": official, "epoch": 299, "max_accuracy": 82.1}, tmp_path / "official.pth")
    ours = create_model(name, num_classes=10, **REDUCED, **like_timm(name)).eval()
    assert load_into(ours, tmp_path / "official.pth")["layout"] == "official"
    assert_same_logits(ours, reference)


def per_stage(value: int | list[int], stages: int = 4) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * stages


@pytest.mark.parametrize("name", HF_VARIANTS)
def test_hugging_face_layout(name, tmp_path):
    transformers = pytest.importorskip("transformers")
    kwargs = VARIANTS[name].kwargs
    dim = REDUCED["embed_dim"]
    config = transformers.FocalNetConfig(
        embed_dim=dim,
        depths=list(REDUCED["depths"]),
        hidden_sizes=[2 * dim, 4 * dim, 8 * dim, 8 * dim],
        focal_levels=per_stage(kwargs["focal_levels"]),
        focal_windows=per_stage(kwargs["focal_windows"]),
        use_conv_embed=kwargs.get("use_overlap_embed", False),
        use_layerscale=kwargs.get("layerscale_value") is not None,
        layerscale_value=kwargs.get("layerscale_value") or 1e-4,
        use_post_layernorm=kwargs.get("use_post_norm", False),
        use_post_layernorm_in_modulation=kwargs.get("use_post_norm_in_modulation", False),
        normalize_modulator=kwargs.get("normalize_modulator", False),  # the official value: no override needed
        num_labels=10,
        image_size=64,
    )
    torch.manual_seed(0)
    reference = transformers.FocalNetForImageClassification(config).eval()
    randomise_vectors(reference)
    reference.save_pretrained(tmp_path / "hf")  # model.safetensors + config.json, as on the hub
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    ours = create_model(name, num_classes=10, **REDUCED).eval()
    assert load_into(ours, tmp_path / "hf")["layout"] == "hf"  # the folder, as users pass it
    assert_same_logits(ours, reference)


# ----------------------------------------------------------------------------------------------- bad input


def test_checkpoint_of_another_architecture(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(CheckpointError, match=r"not a FocalNet checkpoint .*first keys: conv1\.weight"):
        load_into(create_model("focalnet_tiny_srf", **TINY), tmp_path / "resnet18.pth")


def test_checkpoint_of_another_variant_names_keys_and_the_implied_variant(tmp_path):
    with torch.device("meta"):  # full size without the cost of initialising: only the shapes matter here
        small, tiny = create_model("focalnet_small_srf"), create_model("focalnet_tiny_srf")
    path = save_safetensors(small.to_empty(device="cpu"), tmp_path / "small.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"does not fit this model\. The file holds a FocalNet with layout=focalbench, embed_dim=96, "
        r"depths=\(2, 2, 18, 2\), .*\(the architecture of focalnet_small_srf\)\. "
        r"not in the model \(\d+\): layers\.2\.blocks\.10\.",
    ):
        load_into(tiny, path)


def test_checkpoint_of_another_width_names_the_shapes(tmp_path):
    wider = create_model("focalnet_base_srf", embed_dim=12, depths=(1, 1, 2, 1))
    path = save_safetensors(wider, tmp_path / "wider.safetensors")
    with pytest.raises(
        CheckpointError,
        match=r"embed_dim=12, .*\(no registered variant\)\. shape differs \(\d+\): .*file \(48,\) vs model \(32,\)",
    ):
        load_into(create_model("focalnet_tiny_srf", **TINY), path)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_the_weights_identify_their_variant(name):
    with torch.device("meta"):
        state = create_model(name).state_dict()
    assert matching_variants(describe(state)) == [name]


def test_unreadable_and_unsafe_files(tmp_path):
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"cannot read '.*broken\.pth' as a PyTorch checkpoint"):
        load_into(create_model("focalnet_tiny_srf", **TINY), tmp_path / "broken.pth")
    # a pickled object would run code on load: refused (weights_only=True), not executed
    torch.save({"model": {}, "config": logging.getLogger("x")}, tmp_path / "pickle.pth")
    with pytest.raises(CheckpointError, match=r"weights_only=True"):
        load_into(create_model("focalnet_tiny_srf", **TINY), tmp_path / "pickle.pth")
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="holds no state dict of tensors"):
        load_into(create_model("focalnet_tiny_srf", **TINY), tmp_path / "empty.pth")


@pytest.mark.parametrize("content", [b"\xff" * 64, b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage"])
def test_corrupt_safetensors_names_the_file(tmp_path, content):
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"cannot read '{re.escape(str(path))}' as safetensors"):
        load_into(create_model("focalnet_tiny_srf", **TINY), path)


def test_missing_weights_are_a_project_error(tmp_path):
    """The CLI prints project errors on one line: a missing weights file is one (and still a FileNotFoundError)."""
    with pytest.raises(FocalbenchError):
        create_model("focalnet_tiny_srf", **TINY, pretrained=tmp_path / "nope.pth")


def test_offline_hub_id_says_how_to_pass_a_local_path(tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    # huggingface_hub reads the environment once, at import: set the variables for subprocesses and its constants
    # for this one; the empty cache makes the result independent of what this machine has downloaded.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf-home" / "hub"))
    with pytest.raises(
        FileNotFoundError,
        match=r"hub id 'timm/focalnet_tiny_srf\.ms_in1k'.*download the file elsewhere and pass its local path",
    ):
        create_model("focalnet_tiny_srf", pretrained="timm/focalnet_tiny_srf.ms_in1k")


def test_missing_local_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pretrained weights file '.*nope\.pth' does not exist"):
        create_model("focalnet_tiny_srf", **TINY, pretrained=tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError, match="holds neither model.safetensors nor pytorch_model.bin"):
        create_model("focalnet_tiny_srf", **TINY, pretrained=tmp_path)


# ------------------------------------------------------------------------------------------ transfer learning


def test_head_of_another_size_is_dropped_and_reinitialised(tmp_path, caplog):
    source = create_model("focalnet_tiny_srf", num_classes=1000, **TINY)
    path = save_safetensors(source, tmp_path / "in1k.safetensors")
    torch.manual_seed(0)
    fresh = create_model("focalnet_tiny_srf", num_classes=5, **TINY)
    torch.manual_seed(0)
    with caplog.at_level(logging.WARNING, logger="focalbench.models.checkpoints"):
        target = create_model("focalnet_tiny_srf", num_classes=5, pretrained=path, **TINY)
    assert "classifier head dropped (1000 classes in the file, 5 in the model) and re-initialised" in caplog.text
    torch.testing.assert_close(target.head.weight, fresh.head.weight)  # the model's own initialisation
    expected = {k: v for k, v in source.state_dict().items() if not k.startswith("head.")}
    for key, value in target.state_dict().items():
        if not key.startswith("head."):
            torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)


def test_imagenet22k_head_keeps_the_imagenet1k_rows(tmp_path, caplog):
    source = create_model("focalnet_tiny_srf", num_classes=21842, **TINY)
    with caplog.at_level(logging.WARNING, logger="focalbench.models.checkpoints"):
        target = create_model(
            "focalnet_tiny_srf", pretrained=save_safetensors(source, tmp_path / "in22k.safetensors"), **TINY
        )
    assert "first 1000 rows" in caplog.text
    assert torch.equal(target.head.weight, source.head.weight[:1000])
    assert torch.equal(target.head.bias, source.head.bias[:1000])


# --------------------------------------------------------------------------------------------- saving


def test_save_safetensors_round_trip_is_atomic(tmp_path, monkeypatch):
    model = create_model("focalnet_tiny_lrf", num_classes=3, **TINY).eval()
    path = save_safetensors(model, tmp_path / "w.safetensors", metadata={"epoch": "3"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]  # no temporary file left behind
    copy = create_model("focalnet_tiny_lrf", num_classes=3, **TINY).eval()
    assert load_into(copy, path)["layout"] == "focalbench"
    with torch.no_grad():
        assert torch.equal(copy(X), model(X))

    # a write that fails half-way leaves the previous file untouched and no temporary file
    import safetensors.torch

    def fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", fail)
    with pytest.raises(OSError, match="disk full"):
        save_safetensors(create_model("focalnet_tiny_lrf", num_classes=3, **TINY), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]
    load_into(copy, path)
    with torch.no_grad():
        assert torch.equal(copy(X), model(X))


def test_lightning_checkpoint_loads_with_its_prefix_stripped(tmp_path):
    model = create_model("focalnet_tiny_srf", num_classes=3, **TINY).eval()
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3, "global_step": 120}, tmp_path / "last.ckpt")
    copy = create_model("focalnet_tiny_srf", num_classes=3, pretrained=tmp_path / "last.ckpt", **TINY).eval()
    with torch.no_grad():
        assert torch.equal(copy(X), model(X))
