"""The benchmark scripts run and print their comparison (smoke runs: tiny inputs, one timed iteration, no timing
asserted)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_backbone_speed_prints_ratios_and_memory(tmp_path):
    out = tmp_path / "speed.json"
    command = [
        sys.executable, "benchmarks/backbone_speed.py", "--quick", "--image-size", "64", "--threads", "1",
        "--models", "focalnet_tiny_srf", "timm:focalnet_tiny_srf", "--grad-checkpointing", "--json", str(out),
    ]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "focalnet_tiny_srf vs timm:focalnet_tiny_srf: forward" in run.stdout
    assert "; malloc glibc default; " in run.stdout  # the allocator setting the figures were taken under
    results = json.loads(out.read_text())["results"]
    for result in results.values():
        assert result["fwd"] > 0 and result["train"] > 0
        assert {"fwd_faults", "train_faults"} <= result.keys()  # the page faults columns
        assert 0 < result["mem_mb"] < 4096  # the spawned first step's rise in resident memory


@pytest.mark.slow
def test_dw_grad_speed_checks_and_times_every_candidate():
    command = [
        sys.executable, "benchmarks/dw_grad_speed.py", "--shapes", "2x16x12x12", "--kernels", "3", "7",
        "--layouts", "channels_last", "contiguous", "--threads", "1", "--warmup", "0", "--repeats", "1",
    ]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("2x16x12x12")]
    assert len(rows) == 2 * 2 * 2  # precisions x layouts x kernels, each with a time and ratio per candidate
    assert all(len(re.findall(r"\d\.\dx", row)) == 6 for row in rows)  # default + 5 candidates
    assert "relative errors" not in run.stdout  # every candidate agreed with autograd's weight gradient


@pytest.mark.slow
def test_dense_speed_trains_against_timms_focalnet_at_window_9():
    command = [
        sys.executable, "benchmarks/dense_speed.py", "--backbones", "focalnet_tiny_srf", "timm:focalnet_tiny_srf",
        "--heads", "upernet", "--train", "--seg-size", "64", "--threads", "1", "--warmup", "0", "--repeats", "1",
        "--clock", "cpu",
    ]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "upernet-train: focalnet_tiny_srf runs at" in run.stdout
    assert "the speed of timm:focalnet_tiny_srf (load" in run.stdout


PEAK_FAULTS = """
import sys, torch
sys.path.insert(0, "benchmarks")
from backbone_speed import minor_faults, peak_convolutions
convolutions, _ = peak_convolutions("cpu", torch.float32)
with torch.no_grad():
    for _ in range(2):
        convolutions[-1]()
    before = minor_faults()
    for _ in range(5):
        convolutions[-1]()
print(len(convolutions), minor_faults() - before)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
def test_matmul_peak_has_a_convolution_that_takes_no_fresh_pages_under_the_default_allocator():
    run = subprocess.run([sys.executable, "-c", PEAK_FAULTS], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    count, faults = map(int, run.stdout.split()[-2:])
    assert count == 2  # plain and in place
    assert faults < 500  # the plain one took ~12,500 fresh pages a call (51 MB output)


@pytest.mark.parametrize("unfused", [False, True])
def test_backbone_speed_unfused_runs_our_forward_without_the_fused_post_ops(monkeypatch, unfused):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import argparse

    import torch
    from backbone_speed import build, prepare
    from step_breakdown import KindTimer

    args = argparse.Namespace(device="cpu", grad_checkpointing=False, channels_last=False, unfused=unfused)
    ours = prepare(build("focalnet_tiny_srf"), args, compiled=False)
    calls = []

    class Names(KindTimer):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            calls.append(str(func))
            return super().__torch_dispatch__(func, types, args, kwargs)

    with torch.inference_mode(), Names():
        ours.eval()(torch.randn(1, 3, 32, 32))
    fused = [name for name in calls if name.startswith("mkldnn._convolution_pointwise")]
    # 7 a block x 12: f, both focal levels and fc1 (+ GELU), h (x q), proj and fc2 (+ the residual)
    assert len(fused) == (0 if unfused else 84)
    assert calls.count("aten.gelu.default") == (48 if unfused else 12)  # fused, only the global context's is left


def test_pointwise_grad_speed_candidates_and_its_apart_model_give_autograds_gradients(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import torch
    from pointwise_grad_speed import CANDIDATES, ApartConv, with_apart_backward, with_plain_convolutions

    from focalbench.models import create_model
    from focalbench.models.pointwise import PointwiseConv2d

    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    conv = torch.nn.Conv2d(6, 4, 1)
    y = conv(x)
    g = torch.randn_like(y)
    want = torch.autograd.grad(y, (x, conv.weight, conv.bias), g)
    assert list(CANDIDATES) == ["one_call", "apart", "mkl"]
    for fn in CANDIDATES.values():
        got = fn(g, x.detach(), conv.weight.detach())
        assert [tuple(t.shape) for t in got] == [(2, 6, 5, 5), (4, 6, 1, 1), (4,)]
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    model = create_model("focalnet_tiny_srf", embed_dim=8, depths=[1, 1, 1, 1], num_classes=3, drop_path_rate=0.0)
    split, count = with_apart_backward(model)
    assert count == 4 * 5  # f, h, proj, fc1, fc2 in each of the 4 blocks
    assert sum(isinstance(m, ApartConv) for m in split.modules()) == 20
    assert not any(isinstance(m, ApartConv) for m in model.modules())  # the model itself is left as it is
    plain, count = with_plain_convolutions(model)
    assert count == 20
    assert not any(isinstance(m, PointwiseConv2d) for m in plain.modules())
    image = torch.randn(2, 3, 32, 32)
    grads = []
    for net in (model, split, plain):
        torch.nn.functional.cross_entropy(net.train()(image), torch.tensor([0, 2])).backward()
        grads.append({name: p.grad for name, p in net.named_parameters()})
    assert grads[0].keys() == grads[1].keys() == grads[2].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(grads[2][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_pointwise_grad_speed_prints_every_shape_and_the_whole_step(precision):
    command = [
        sys.executable, "benchmarks/pointwise_grad_speed.py", "--image-size", "32", "--batch-size", "1",
        "--threads", "1", "--warmup", "0", "--repeats", "1", "--precision", precision,
    ]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    rows = re.findall(r"^(f|h|proj|fc1|fc2) \d+->\d+ @\d+x\d+ +[\d.]+ +[\d.]+ +[\d.]+$", run.stdout, re.MULTILINE)
    assert rows == ["f", "h", "proj", "fc1", "fc2"] * 4
    assert re.search(r"one_call 1.00x, apart [\d.]+x, mkl [\d.]+x of one_call's speed", run.stdout)
    apart = r"backward apart \d+ ms, [\d.]+x; " if precision == "fp32" else ""  # fp32 only: no autocast casts
    assert re.search(
        rf"{precision} train step of focalnet_tiny_srf, 60 1x1 convolutions: \d+ ms on PyTorch's convolution; "
        rf"{apart}autotuned \(the model\) \d+ ms, [\d.]+x$",
        run.stdout,
        re.MULTILINE,
    )


def test_optimizer_speed_times_the_same_update_three_ways(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import torch
    from optimizer_speed import VARIANTS, optimizers

    from focalbench.models import create_model

    model = create_model("focalnet_tiny_srf", embed_dim=8, depths=[1, 1, 1, 1], num_classes=3)
    built = optimizers(model, "cpu")
    assert list(built) == list(VARIANTS) == ["default", "foreach", "fused"]
    assert built["fused"].defaults["fused"] and built["foreach"].defaults["foreach"]
    for optimizer in built.values():
        optimizer.step()
    weights = {name: [p for group in o.param_groups for p in group["params"]] for name, o in built.items()}
    start = list(model.parameters())
    assert not any(p is q for p in weights["default"] for q in weights["fused"])  # each variant has its own copy
    assert not torch.equal(weights["default"][0], start[0])  # the step moved the weights
    for name in ("foreach", "fused"):  # the same update as the default's
        for p, q in zip(weights["default"], weights[name]):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_optimizer_speed_prints_each_variant_against_the_default():
    command = [
        sys.executable, "benchmarks/optimizer_speed.py", "--model", "focalnet_tiny_srf", "--threads", "1",
        "--warmup", "0", "--repeats", "1",
    ]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "AdamW over focalnet_tiny_srf's 28.4 M parameters" in run.stdout
    rows = re.findall(r"^  (\w+) +[\d.]+ ms per step +([\d.]+)x the default's speed$", run.stdout, re.MULTILINE)
    assert [name for name, _ in rows] == ["default", "foreach", "fused"]
    assert rows[0][1] == "1.00"


@pytest.mark.parametrize("input_grad", [True, False])
def test_step_breakdown_sorts_calls_into_kinds_and_counts_the_1x1_flops(monkeypatch, input_grad):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import torch
    from step_breakdown import KindTimer

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(4, 6, 1), torch.nn.GELU(), torch.nn.Conv2d(6, 6, 5, padding=2, groups=6),
        torch.nn.Conv2d(6, 6, 3, padding=1),
    )  # fmt: skip
    x = torch.randn(2, 4, 8, 8, requires_grad=input_grad)
    timer = KindTimer()
    with timer:
        model(x).mul(2).sum().backward()
        timer.phase = "optimizer"
        torch.optim.SGD(model.parameters(), lr=0.1).step()
    kinds = {kind for kind, seconds in timer.seconds.items() if seconds > 0}
    assert {"1x1 conv forward", "1x1 conv backward", "depth-wise conv", "other conv", "GELU"} <= kinds
    assert {"element-wise, copies", "optimizer"} <= kinds
    flop = 2 * 2 * 8 * 8 * 4 * 6  # 2 x N x H x W x C_in x C_out
    assert timer.flop["1x1 conv forward"] == flop
    assert timer.flop["1x1 conv backward"] == (2 if input_grad else 1) * flop  # the weight's, the input's if wanted
    assert timer.flop["depth-wise conv"] == timer.flop["other conv"] == 0


def test_backbone_speed_peak_memory_spans_the_asked_number_of_steps(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import argparse

    import backbone_speed
    import torch

    steps = []
    monkeypatch.setattr(backbone_speed, "build", lambda spec, drop_path: torch.nn.Identity())
    monkeypatch.setattr(backbone_speed, "prepare", lambda model, args, compiled: model)
    monkeypatch.setattr(backbone_speed, "batch", lambda args: ())
    monkeypatch.setattr(backbone_speed, "train_step", lambda *a: lambda: steps.append(1))
    monkeypatch.setattr(backbone_speed, "apply_malloc_setting", lambda args: None)
    sent = []
    connection = argparse.Namespace(send=sent.append)
    args = argparse.Namespace(threads=1, drop_path=0.0, peak_steps=3)
    backbone_speed._first_step_peak("any", args, connection)
    assert len(steps) == 3 and len(sent) == 1 and sent[0] >= 0


def test_step_breakdown_counts_the_1x1_products_of_each_pass(monkeypatch, force_pointwise_library):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import torch
    from step_breakdown import KindTimer

    from focalbench.models import pointwise

    force_pointwise_library("mkl")  # the 1x1 layer as MKL products
    conv = pointwise.PointwiseConv2d(4, 6)
    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    timer = KindTimer()
    with timer:
        conv(x).sum().backward()
    flop = 2 * 2 * 8 * 8 * 4 * 6
    assert timer.flop["1x1 conv forward"] == flop  # addmm
    assert timer.flop["1x1 conv backward"] == 2 * flop  # mm for the input's gradient and for the weight's


@pytest.mark.slow
def test_step_breakdown_prints_every_kind_for_both_models():
    command = [
        sys.executable, "benchmarks/step_breakdown.py", "--image-size", "64", "--batch-size", "2", "--threads", "1",
        "--warmup", "0", "--repeats", "1",
    ]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rows = dict(re.findall(r"^([\w ,-]+?) +(-?[\d.]+ +-?[\d.]+ +[+-][\d.]+)$", run.stdout, re.MULTILINE))
    for kind in ("1x1 conv forward", "1x1 conv backward", "depth-wise conv", "GELU", "optimizer", "whole step"):
        ours, peer, difference = map(float, rows[kind].split())
        assert ours > 0 and peer > 0 and abs(ours - peer - difference) < 0.11
    assert re.search(r"speed ratio, focalnet_tiny_srf / timm:focalnet_tiny_srf: [\d.]+x", run.stdout)
    assert "1x1 conv backward rate: focalnet_tiny_srf" in run.stdout


def test_step_breakdown_counts_a_fused_convolution_by_its_input_in_place_or_not(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import torch
    from step_breakdown import conv_kind

    x, out, weight = torch.empty(2, 4, 8, 8), torch.empty(2, 6, 8, 8), torch.empty(6, 4, 1, 1)
    flop = 2 * 2 * 8 * 8 * 4 * 6  # 2 x N x H x W x C_in x C_out, whichever argument holds the output
    assert conv_kind("mkldnn._convolution_pointwise.binary", (x, out, weight)) == ("1x1 conv forward", flop)
    assert conv_kind("mkldnn._convolution_pointwise_.binary", (out, x, weight)) == ("1x1 conv forward", flop)


def test_backbone_speed_header_says_where_our_1x1_choices_come_from(monkeypatch, tmp_path):
    """The fresh peak-memory processes take the stored choices, as a later run does, unless the cache is off."""
    from backbone_speed import autotune_setting

    from focalbench.models import pointwise

    monkeypatch.setattr(pointwise, "_enabled", True)
    monkeypatch.setenv("FOCALBENCH_AUTOTUNE_CACHE", str(tmp_path / "choices.json"))
    assert autotune_setting() == f"1x1 choices kept in {tmp_path / 'choices.json'}"
    monkeypatch.setenv("FOCALBENCH_AUTOTUNE_CACHE", "0")
    assert autotune_setting() == "1x1 choices timed in every process (FOCALBENCH_AUTOTUNE_CACHE=0)"
    monkeypatch.setattr(pointwise, "_enabled", False)
    assert autotune_setting() == "1x1 autotuning off"


def test_matmul_peak_in_bf16_stops_with_one_line_on_a_cpu_without_bf16_kernels(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import argparse

    from backbone_speed import matmul_peak

    from focalbench.models import fused

    monkeypatch.setattr(fused, "ONEDNN_BF16", False)  # an AVX2-only CPU
    args = argparse.Namespace(device="cpu", clock="wall", warmup=0, repeats=1)
    with pytest.raises(SystemExit, match=r"^bf16 on this CPU: it has no bf16 kernels .*measure fp32 here"):
        matmul_peak(args, "bf16")
