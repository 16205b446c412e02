"""The autotuned 1×1 convolution (``focalbench.models.pointwise``): each library's passes equal autograd's
convolution, the timing keeps the faster one per key, and the model trains the same on either."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from focalbench.models import pointwise
from focalbench.models.focalnet import FocalNet
from focalbench.models.pointwise import PointwiseConv2d, pointwise_conv2d


@pytest.fixture(autouse=True)
def fresh_choices(monkeypatch):
    monkeypatch.setattr(pointwise, "choices", {})
    monkeypatch.setattr(pointwise, "trials", {})
    monkeypatch.setattr(pointwise, "_enabled", True)


def _operands(dtype=torch.float32, c_in=5, c_out=7, bias=True):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, c_in, 3, 4, dtype=dtype, generator=generator).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c_out, c_in, 1, 1, dtype=dtype, generator=generator)
    b = torch.randn(c_out, dtype=dtype, generator=generator) if bias else None
    return x, w, b


@pytest.mark.parametrize("library", pointwise.LIBRARIES)
@pytest.mark.parametrize("bias", [True, False])
def test_each_library_passes_gradcheck(force_pointwise_library, library, bias):
    force_pointwise_library(library)
    operands = [t.requires_grad_() if t is not None else None for t in _operands(torch.float64, bias=bias)]
    assert pointwise_conv2d(*operands).grad_fn.name() == "_PointwiseBackward"
    assert torch.autograd.gradcheck(pointwise_conv2d, tuple(operands))


@pytest.mark.parametrize("library", pointwise.LIBRARIES)
@pytest.mark.parametrize("wanted", ["all", "weights only", "input only"])
def test_each_library_equals_autograds_convolution(force_pointwise_library, library, wanted):
    force_pointwise_library(library)
    x, w, b = _operands()
    x.requires_grad_(wanted != "weights only")
    w.requires_grad_(wanted != "input only")
    b.requires_grad_(wanted != "input only")
    g = torch.randn(2, 7, 3, 4).contiguous(memory_format=torch.channels_last)
    leaves = [t for t in (x, w, b) if t.requires_grad]
    out = pointwise_conv2d(x, w, b)
    got = torch.autograd.grad(out, leaves, g)
    reference = F.conv2d(x, w, b)
    expected = torch.autograd.grad(reference, leaves, g)
    torch.testing.assert_close(out, reference)
    assert out.is_contiguous(memory_format=torch.channels_last)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e)
    if x.requires_grad:
        assert got[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("library", pointwise.LIBRARIES)
def test_bf16_autocast_casts_as_autocast_does_for_conv2d(force_pointwise_library, library):
    force_pointwise_library(library)
    x, w, b = (t.requires_grad_() for t in _operands(c_in=16, c_out=32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pointwise_conv2d(x, w, b)
        reference = F.conv2d(x, w, b)
    assert out.dtype == reference.dtype == torch.bfloat16
    torch.testing.assert_close(out, reference, rtol=2e-2, atol=2e-2)
    got = torch.autograd.grad(out.float().square().sum(), (x, w, b))
    expected = torch.autograd.grad(reference.float().square().sum(), (x, w, b))
    for a, e in zip(got, expected):
        assert a.dtype == torch.float32  # the leaves' own dtype, through autocast's casts
        torch.testing.assert_close(a, e, rtol=3e-2, atol=3e-2 * e.abs().max().item())


def test_plain_convolution_where_no_gradient_or_no_channels_last():
    x, w, b = _operands()
    with torch.no_grad():
        assert pointwise_conv2d(x, w.requires_grad_(), b).grad_fn is None
    nchw = x.contiguous().requires_grad_()
    assert pointwise_conv2d(nchw, w, b).grad_fn.name() == "ConvolutionBackward0"
    assert pointwise_conv2d(x.requires_grad_(), w, b).grad_fn.name() == "_PointwiseBackward"


@pytest.mark.parametrize("slow_library", pointwise.LIBRARIES)
def test_timing_runs_the_real_calls_and_keeps_the_faster_library_per_key(count_library_calls, slow_library):
    calls = count_library_calls(slow_library)
    faster = next(name for name in pointwise.LIBRARIES if name != slow_library)
    x, w, b = (t.requires_grad_() for t in _operands())
    g = torch.randn(2, 7, 3, 4).contiguous(memory_format=torch.channels_last)
    expected = (F.conv2d(x, w, b), *torch.autograd.grad(F.conv2d(x, w, b), (x, w, b), g))
    rounds = 1 + pointwise.TIMED_ROUNDS
    for call in range(2 * rounds):  # the libraries take turns on the key's first calls, oneDNN first
        out = pointwise_conv2d(x, w, b)
        got = (out, *torch.autograd.grad(out, (x, w, b), g))
        for a, e in zip(got, expected):  # each timed call's own result is the pass's result
            torch.testing.assert_close(a, e)
        timed_calls = {"onednn": call // 2 + 1, "mkl": (call + 1) // 2}
        assert calls == {name: 2 * n for name, n in timed_calls.items()}  # no pass runs twice: forward + backward
    assert sorted(pointwise.choices.values()) == [faster, faster]  # one forward key, one backward key
    assert {key[0] for key in pointwise.choices} == {"forward", "backward"} and pointwise.trials == {}
    pointwise_conv2d(x, w, b).sum().backward()
    assert calls[slow_library] == 2 * rounds and calls[faster] == 2 * (rounds + 1)
    # a map of 2·3·5 = 30 rows is in the same power-of-two bucket as 24: no new timing, the faster runs
    x2 = torch.randn(2, 5, 3, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    pointwise_conv2d(x2, w, b).sum().backward()
    assert len(pointwise.choices) == 2
    assert calls[slow_library] == 2 * rounds and calls[faster] == 2 * (rounds + 2)


def test_no_timing_under_deterministic_algorithms_or_when_turned_off(monkeypatch):
    timed = []
    monkeypatch.setattr(pointwise, "_timed", lambda fn, *args: timed.append(fn) or (fn(*args), 0.0))
    x, w, b = (t.requires_grad_() for t in _operands())
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        pointwise_conv2d(x, w, b).sum().backward()
    finally:
        torch.use_deterministic_algorithms(deterministic)
    assert timed == [] and set(pointwise.choices.values()) == {"onednn"}
    pointwise.choices.clear()
    pointwise.set_autotune(False)
    pointwise_conv2d(x, w, b).sum().backward()
    assert timed == [] and set(pointwise.choices.values()) == {"onednn"}
    pointwise.choices.clear()
    pointwise.set_autotune(True)
    pointwise_conv2d(x, w, b).sum().backward()
    assert len(timed) == 2 and pointwise.choices == {}  # on: the first forward and backward are timed calls


@pytest.mark.parametrize("library", pointwise.LIBRARIES)
def test_focalnet_trains_the_same_on_either_library(force_pointwise_library, library):
    keys = force_pointwise_library(library)
    torch.manual_seed(0)
    model = FocalNet(
        embed_dim=16, depths=(1, 1), focal_levels=(2, 2), num_classes=3, layerscale_value=1e-1, drop_path_rate=0.0
    )
    assert sum(isinstance(m, PointwiseConv2d) for m in model.modules()) == 2 * 5  # f, h, proj, fc1, fc2 a block
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if isinstance(module, PointwiseConv2d):
            module.__class__ = nn.Conv2d
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for net in (model, plain):
        loss = F.cross_entropy(net(x), torch.tensor([0, 2]))
        grads.append(dict(zip(dict(net.named_parameters()), torch.autograd.grad(loss, list(net.parameters())))))
    assert [key[0] for key in keys] == ["forward"] * 10 + ["backward"] * 10  # every 1×1 layer, both passes
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)
    assert model.layers[0].blocks[0].mlp.fc1.weight.shape == (64, 16, 1, 1)  # the state dict's 1×1 kernels


def test_checkpointing_keeps_the_1x1_layers_on_pytorchs_convolution(force_pointwise_library):
    """Under activation checkpointing MKL's cached buffers would land on the lowered peak: no layer asks for a
    library then, and every one does again once checkpointing is off."""
    keys = force_pointwise_library("mkl")
    torch.manual_seed(0)
    model = FocalNet(embed_dim=16, depths=(1, 1), focal_levels=(2, 2), num_classes=3, drop_path_rate=0.0)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    model.set_grad_checkpointing(True)
    F.cross_entropy(model(x), y).backward()
    assert keys == []
    model.set_grad_checkpointing(False)
    F.cross_entropy(model(x), y).backward()
    assert [key[0] for key in keys] == ["forward"] * 10 + ["backward"] * 10
