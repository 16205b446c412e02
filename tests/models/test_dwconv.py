"""The focal levels' depth-wise convolution (``focalbench.models.dwconv``) gives autograd's gradients: the strip
weight gradient at every kernel size, layout and chunking, the module in fp32 and under bf16 autocast, and the
model under activation checkpointing, torch.compile and DDP."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from focalbench.models import create_model
from focalbench.models.dwconv import DepthwiseConv2d, default_weight_grad, strip_centres, strip_weight_grad

pytestmark = pytest.mark.usefixtures("one_thread")

# odd sizes: channels not a multiple of oneDNN's 16-channel block, H != W, and W below the widest kernels
SHAPE = (2, 5, 7, 9)


def _tensors(shape, layout: str, dtype=torch.float32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """x and an output gradient of ``shape`` in ``layout``; "channel_slice" makes x a channel slice of a wider
    channels_last map, as the first focal level's input (a piece of ``f``'s output) is."""
    generator = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    wide = torch.randn(n, 2 * c + 3, h, w, generator=generator, dtype=dtype)
    grad = torch.randn(shape, generator=generator, dtype=dtype)
    if layout == "contiguous":
        return wide[:, c : 2 * c].contiguous(), grad
    wide, grad = wide.contiguous(memory_format=torch.channels_last), grad.contiguous(memory_format=torch.channels_last)
    x = wide[:, c : 2 * c]
    return (x if layout == "channel_slice" else x.contiguous(memory_format=torch.channels_last)), grad


def _reference_weight_grad(x: torch.Tensor, grad: torch.Tensor, k: int) -> torch.Tensor:
    """Autograd's weight gradient in float64 (ATen's reference convolution, not oneDNN)."""
    weight = torch.zeros(x.shape[1], 1, k, k, dtype=torch.float64, requires_grad=True)
    F.conv2d(x.double(), weight, padding=k // 2, groups=x.shape[1]).backward(grad.double())
    return weight.grad


def test_strips_cover_the_kernel_and_stay_inside_it():
    for k in (3, 5, 7, 9, 11, 13, 15):
        columns = {s + d for s in strip_centres(k) for d in (-1, 0, 1)}
        assert columns == set(range(-(k // 2), k // 2 + 1)), k
        assert len(strip_centres(k)) == -(-k // 3)


@pytest.mark.parametrize("k", [3, 5, 7, 9, 11, 13])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous", "channel_slice"])
def test_strip_weight_grad_equals_autograd(k, layout):
    x, grad = _tensors(SHAPE, layout)
    expected = _reference_weight_grad(x, grad, k)
    torch.testing.assert_close(strip_weight_grad(x, grad, k).double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_bytes", [1, 200, 700, 10**9])  # one-row bands, bands, whole images, one chunk
def test_strip_weight_grad_in_chunks_equals_autograd(chunk_bytes):
    x, grad = _tensors((3, 4, 11, 6), "channels_last", seed=1)
    expected = _reference_weight_grad(x, grad, 7)
    torch.testing.assert_close(strip_weight_grad(x, grad, 7, chunk_bytes).double(), expected, rtol=1e-5, atol=1e-5)


def test_strip_weight_grad_in_bf16_stays_within_bf16_error():
    x, grad = _tensors(SHAPE, "channels_last", dtype=torch.bfloat16)
    expected = _reference_weight_grad(x, grad, 9)
    got = strip_weight_grad(x, grad, 9, chunk_bytes=300)  # chunks: their sums are accumulated in fp32
    assert got.dtype == torch.bfloat16
    assert (got.double() - expected).abs().max() <= 1e-2 * expected.abs().max()
    assert (default_weight_grad(x, grad, x.new_empty(5, 1, 9, 9)).double() - expected).abs().max() <= 1e-2 * (
        expected.abs().max()
    )  # the same bound holds for oneDNN's own bf16 weight gradient


def _module_pair(k: int, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    ours = DepthwiseConv2d(SHAPE[1], k)
    reference = nn.Conv2d(SHAPE[1], SHAPE[1], k, padding=k // 2, groups=SHAPE[1], bias=False)
    reference.load_state_dict(ours.state_dict())
    return ours, reference


def _gradients(module: nn.Module, x: torch.Tensor, grad: torch.Tensor, bf16: bool) -> tuple:
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = module(x)
    out.backward(grad.to(out.dtype))
    return out, x.grad, module.weight.grad


@pytest.mark.parametrize("k", [3, 5, 9, 13])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous", "channel_slice"])
def test_module_gradients_equal_autograd(k, precision, layout):
    ours, reference = _module_pair(k)
    x, grad = _tensors(SHAPE, layout, seed=k)
    bf16 = precision == "bf16"
    out, x_grad, w_grad = _gradients(ours, x, grad, bf16)
    assert type(out.grad_fn).__name__ == "_DepthwiseConvBackward"  # the custom backward ran, not autograd's
    ref_out, ref_x_grad, ref_w_grad = _gradients(reference, x, grad, bf16)
    assert out.dtype == ref_out.dtype == (torch.bfloat16 if bf16 else torch.float32)
    assert w_grad.dtype == torch.float32  # the parameter's gradient, cast back as autocast does
    # fp32: the same sums in another order; bf16: both sides rounded to bf16 (8 bits), compare at that scale
    tol = 2e-2 if bf16 else 1e-5
    for got, expected in ((out, ref_out), (x_grad, ref_x_grad), (w_grad, ref_w_grad)):
        assert (got.float() - expected.float()).abs().max() <= tol * expected.float().abs().max()


@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("layout", ["channels_last", "channel_slice"])
@pytest.mark.parametrize("weight_format", [torch.contiguous_format, torch.channels_last], ids=["contiguous", "cl"])
def test_weight_gradient_has_the_parameter_s_strides(k, layout, weight_format):
    """oneDNN's 3x3 weight gradient of a channels_last input came with strides (k*k, 1, k, 1) for a contiguous
    (C, 1, k, k) weight, and the strips' gradient is contiguous for a channels_last one (``model.to(memory_format=
    torch.channels_last)``); DDP's reducer compares all strides with its bucket's, which are the parameter's, and
    warned on every run ("Grad strides do not match bucket view strides")."""
    ours, _ = _module_pair(k)
    ours.to(memory_format=weight_format)
    x, grad = _tensors(SHAPE, layout, seed=k)
    _, _, w_grad = _gradients(ours, x, grad, bf16=False)
    expected = (k * k, k * k, k, 1) if weight_format == torch.contiguous_format else (k * k, 1, k, 1)
    assert w_grad.stride() == ours.weight.stride() == expected


def test_no_grad_and_even_kernels_take_plain_convolution():
    x = torch.randn(SHAPE)
    ours, reference = _module_pair(5)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))
    even, reference = DepthwiseConv2d(5, 4), nn.Conv2d(5, 5, 4, padding=2, groups=5, bias=False)
    reference.load_state_dict(even.state_dict())
    out = even(x.requires_grad_())
    assert out.shape == reference(x).shape == (2, 5, 8, 10)  # 'same' padding of an even kernel grows by one
    assert type(out.grad_fn).__name__ == "ConvolutionBackward0"


def _srf5(**kwargs) -> nn.Module:
    """A tiny FocalNet whose levels have 5x5 and 7x7 kernels, so every level takes the strips."""
    torch.manual_seed(0)
    return create_model("focalnet_tiny_srf", num_classes=3, embed_dim=8, depths=(1, 1, 1, 1), focal_windows=5, **kwargs)


def _loss_and_grads(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = F.cross_entropy(model(x), torch.tensor([0, 2]))
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_model_with_strips_matches_plain_convolutions():
    model, x = _srf5(drop_path_rate=0.0).train(), torch.randn(2, 3, 32, 32)
    loss, grads = _loss_and_grads(model, x)
    plain = _srf5(drop_path_rate=0.0).train()
    for module in plain.modules():  # the same weights through nn.Conv2d's own forward and backward
        if isinstance(module, DepthwiseConv2d):
            module.forward = nn.Conv2d.forward.__get__(module)
    plain_loss, plain_grads = _loss_and_grads(plain, x)
    torch.testing.assert_close(loss, plain_loss)
    assert any("focal_layers" in name for name in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_compiled_training_step_matches_eager():
    """Under torch.compile the focal levels fall back to F.conv2d (inductor schedules its own backward)."""
    model, x = _srf5(drop_path_rate=0.0).train(), torch.randn(2, 3, 32, 32)
    loss, grads = _loss_and_grads(model, x)
    compiled_loss, compiled_grads = _loss_and_grads(torch.compile(model), x)
    compiled_grads = {name.removeprefix("_orig_mod."): grad for name, grad in compiled_grads.items()}
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-5, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)


def _ddp_rank(rank: int, port: int, x: torch.Tensor, queue) -> None:  # noqa: ANN001 - a multiprocessing queue
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    model = nn.parallel.DistributedDataParallel(_srf5(drop_path_rate=0.0).train())
    half = slice(rank, rank + 1)  # one image each; DDP averages the two gradients
    F.cross_entropy(model(x[half]), torch.tensor([0, 2])[half]).backward()
    if rank == 0:
        # numpy arrays travel by value (tensors would travel as shared memory of a process about to exit)
        queue.put({name.removeprefix("module."): p.grad.numpy() for name, p in model.named_parameters()})
    dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_gradients_equal_one_process():
    import socket

    import torch.multiprocessing as mp

    x = torch.randn(2, 3, 32, 32)
    _, expected = _loss_and_grads(_srf5(drop_path_rate=0.0).train(), x)  # mean loss over both images
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    processes = [context.Process(target=_ddp_rank, args=(rank, port, x, queue)) for rank in range(2)]
    for process in processes:
        process.start()
    grads = queue.get()
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    assert any("focal_layers" in name for name in grads)
    for name, grad in expected.items():
        torch.testing.assert_close(torch.from_numpy(grads[name]), grad, rtol=1e-4, atol=1e-6, msg=name)
