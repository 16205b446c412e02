"""The oneDNN fused inference path computes the same function as the plain modules."""

from __future__ import annotations

import pytest
import torch

from focalbench.models import VARIANTS, create_model, fused

TINY = {"embed_dim": 16, "depths": (1, 1, 2, 1)}
# one variant per combination of flags: plain, LayerScale + post-norm (+ normalize), post-norm in modulation, iso
FLAG_VARIANTS = ["focalnet_tiny_lrf", "focalnet_large_fl4", "focalnet_huge_fl3", "focalnet_base_iso"]
needs_onednn_bf16 = pytest.mark.skipif(
    not fused.ONEDNN_BF16, reason="the fused bf16 path needs oneDNN's bf16 (AVX-512)"
)


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    overrides = {"embed_dim": 32, "depths": (2,)} if name.endswith("_iso") else TINY
    model = create_model(name, num_classes=10, **overrides).eval()
    with torch.no_grad():  # non-trivial LayerScale and norms, so folding γ into the weights is exercised
        for param_name, param in model.named_parameters():
            if "gamma" in param_name:
                param.normal_(0, 1)
            elif "norm" in param_name and param.ndim == 1:
                param.normal_(1 if param_name.endswith("weight") else 0, 0.2)
    return model


def _plain(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` through the plain modules; the fused path is on again afterwards."""
    model.set_fused_inference(False)
    try:
        return model(x)
    finally:
        model.set_fused_inference(True)


@pytest.mark.parametrize("name", FLAG_VARIANTS)
def test_fused_equals_plain_fp32(name):
    assert name in VARIANTS
    model, x = _model(name), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = _plain(model, x)
        fused = model(x)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)


@needs_onednn_bf16
@pytest.mark.parametrize("name", FLAG_VARIANTS)
def test_fused_bf16_autocast_stays_within_bf16_error(name):
    model, x = _model(name), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        reference = model(x)  # fp32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = _plain(model, x).float()
            fused = model(x).float()
    scale = reference.abs().max()
    # bf16 keeps ~3 significant digits; both bf16 paths sit within 2 % of the logit range of fp32
    assert (plain - reference).abs().max() <= 0.02 * scale
    assert (fused - reference).abs().max() <= 0.02 * scale


def test_bf16_on_a_cpu_without_onednn_bf16_runs_the_plain_path(monkeypatch):
    """oneDNN's bf16 convolutions need AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT; on other CPUs (AVX2-only ones) its
    fused calls raise, so a bf16 autocast forward there takes the plain modules, while fp32 still fuses."""
    monkeypatch.setattr(fused, "ONEDNN_BF16", False)
    prepares = _count_prepares(monkeypatch)
    model, x = _model("focalnet_large_fl4"), torch.randn(2, 3, 32, 32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = _plain(model, x)
        out = model(x)
    assert prepares[0] == 0
    torch.testing.assert_close(out, plain, rtol=0, atol=0)
    with torch.no_grad():
        model(x)
    assert prepares[0] > 0


def test_training_and_grad_mode_use_the_autograd_path():
    model, x = _model("focalnet_tiny_srf"), torch.randn(2, 3, 32, 32)
    model.train()
    model(x).sum().backward()
    assert model.layers[0].blocks[0].mlp.fc1.weight.grad is not None
    model.eval()
    model.zero_grad()
    model(x).sum().backward()  # eval but grad enabled: still differentiable
    assert model.layers[0].blocks[0].modulation.h.weight.grad is not None


def _count_prepares(monkeypatch) -> list[int]:
    calls = [0]
    prepare = fused._prepare

    def counting(*args):  # noqa: ANN002, ANN202
        calls[0] += 1
        return prepare(*args)

    monkeypatch.setattr(fused, "_prepare", counting)
    return calls


def _prepared_entries(model: torch.nn.Module) -> list[torch.Tensor]:
    return [fused._PREPARED[p][1] for p in model.parameters() if p in fused._PREPARED]


def test_cached_fused_weights_follow_weight_updates(monkeypatch):
    """Each fused convolution packs its (γ-scaled, cast) weight once; an in-place update re-packs every one."""
    model, x = _model("focalnet_large_fl4"), torch.randn(1, 3, 32, 32)
    prepares = _count_prepares(monkeypatch)
    with torch.no_grad():
        before = model(x)
        packed = len(_prepared_entries(model))
        # per block: f, h, fc1 and the focal levels' depth-wise convs (post-norm keeps proj and fc2 apart)
        blocks = [m for m in model.modules() if isinstance(m, type(model.layers[0].blocks[0]))]
        assert packed == prepares[0] == sum(3 + len(b.modulation.focal_layers) for b in blocks) > 0
        assert all(weight.layout == torch._mkldnn for weight in _prepared_entries(model))
        model(x)
        assert prepares[0] == packed  # the second forward reuses them
        for param in model.parameters():  # what an optimizer step or load_state_dict does: in-place updates
            param.mul_(1.1)
        expected = _plain(model, x)
        after = model(x)
    assert prepares[0] == 2 * packed
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)


def test_packed_weights_serve_any_input_size_and_go_when_training_starts(monkeypatch):
    """The weights are packed for the first input's shape; other shapes reuse them and still compute the plain
    function. Switching to train mode frees the packed copies (an optimizer step would make them stale), and a
    copy of the model (EMA, deepcopy) carries none of them."""
    import copy

    model = _model("focalnet_tiny_lrf")
    prepares = _count_prepares(monkeypatch)
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
        packed = prepares[0]
        for size in ((1, 3, 96, 64), (3, 3, 32, 48)):
            x = torch.randn(size)
            expected = _plain(model, x)
            torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
        assert prepares[0] == packed
        twin = copy.deepcopy(model)
        assert len(_prepared_entries(model)) == packed and not _prepared_entries(twin)
        torch.testing.assert_close(twin(x), expected, rtol=1e-5, atol=1e-5)
    model.train()
    assert not _prepared_entries(model)


def test_packed_weights_follow_updates_that_leave_the_version_counters_alone(monkeypatch):
    """Fused AdamW writes the weights without bumping their version counters. An optimizer step (any optimizer)
    drops every packed weight, and so does an ``eval()`` call, so the next fused forward computes with the weights
    as they are, also when the model never left eval mode (a step taken with grad enabled in eval mode)."""
    model, x = _model("focalnet_tiny_lrf"), torch.randn(2, 3, 32, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
    prepares = _count_prepares(monkeypatch)
    with torch.no_grad():
        before = model(x)
    packed = prepares[0]
    versions = [p._version for p in model.parameters()]
    model(x).sum().backward()  # eval mode, grad enabled: the autograd path
    optimizer.step()
    assert [p._version for p in model.parameters()] == versions  # what the version key alone could not see
    assert not _prepared_entries(model)
    with torch.no_grad():
        after = model(x)
        expected = _plain(model, x)
    assert prepares[0] == 2 * packed and not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)
    for param in model.parameters():  # e.g. weights written by a collective, in place, behind autograd's back
        param.data.view(-1)[0] += 1.0
    model.eval()
    assert not _prepared_entries(model)


def test_global_context_only_model_runs_fused_and_plain():
    """L = 0 (the paper's ablation: only the global context): the gated sum has one term, on both paths."""
    torch.manual_seed(0)
    model = create_model("focalnet_tiny_srf", num_classes=10, focal_levels=0, **TINY).eval()
    modulation, x = model.layers[0].blocks[0].modulation, torch.randn(2, 3, 64, 64)
    assert len(modulation.focal_layers) == 0
    with torch.no_grad():
        fused = model(x)
        model.set_fused_inference(False)
        plain = model(x)
        z = torch.randn(2, 16, 8, 8)
        q, ctx, gate = modulation.f(z).split((16, 16, 1), dim=1)
        expected = modulation.proj(q * modulation.h(modulation.act(ctx.mean((2, 3), keepdim=True)) * gate))
        torch.testing.assert_close(modulation(z), expected)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    model.train()
    model(x).sum().backward()
    assert modulation.f.weight.grad is not None


def test_custom_ops_for_torch_compile_pass_opcheck():
    """The oneDNN calls as torch.library custom ops: fake kernels agree with the real ones (shapes, strides,
    dtypes), for inputs in either layout."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 7)
    for layout in (torch.contiguous_format, torch.channels_last):
        x = x.contiguous(memory_format=layout)
        depthwise, pointwise = torch.randn(8, 1, 5, 5), torch.randn(6, 8, 1, 1)
        torch.library.opcheck(fused._conv_unary_op, (x, depthwise, None, None, [2, 2], 8, "gelu"))
        torch.library.opcheck(fused._conv_unary_op, (x, pointwise, torch.randn(6), torch.randn(6), [0, 0], 1, "none"))
        other = torch.randn(2, 6, 5, 7).contiguous(memory_format=layout)
        for op in ("add", "mul"):
            torch.library.opcheck(fused._conv1x1_binary_op, (x, other, pointwise, torch.randn(6), None, op))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=needs_onednn_bf16)])
def test_compiled_fused_forward_equals_plain_without_graph_breaks(precision, monkeypatch):
    """Under torch.compile the fused path stays (as custom ops inductor keeps), computes the plain function and
    packs each weight once: the compiled calls reuse the packed weights, as the eager ones do."""
    import torch._dynamo

    model, x = _model("focalnet_large_fl4"), torch.randn(2, 3, 64, 64)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    prepares = _count_prepares(monkeypatch)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        plain = _plain(model, x).float()
        compiled_model = torch.compile(model)
        compiled = compiled_model(x).float()
        packed = prepares[0]
        compiled_model(x)
    assert packed == len(_prepared_entries(model)) > 0 and prepares[0] == packed
    assert not torch._dynamo.utils.counters["graph_break"]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    graphs = []
    with torch.no_grad():  # the traced graph holds the custom ops (a capturing backend: no inductor needed)
        torch.compile(model, backend=lambda gm, _: graphs.append(gm.code) or gm.forward)(x)
    assert "focalbench.conv_unary" in graphs[0] and "focalbench.conv1x1_binary" in graphs[0]
    tolerance = 0.02 * plain.abs().max() if precision == "bf16" else 1e-5
    torch.testing.assert_close(compiled, plain, rtol=0, atol=tolerance)
