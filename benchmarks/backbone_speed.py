"""Forward and train-step speed of our FocalNet vs timm's FocalNet, Swin-T and ConvNeXt-T, in one process.

    python benchmarks/backbone_speed.py                         # fp32 eager, CPU, 2 threads, batch 8, 224 px
    python benchmarks/backbone_speed.py --precision bf16        # autocast bf16 for every model
    python benchmarks/backbone_speed.py --compile               # torch.compile every model (compile time shown)
    python benchmarks/backbone_speed.py --compile --unfused     # ours without its fused post-ops (inductor's own)
    python benchmarks/backbone_speed.py --grad-checkpointing    # activation checkpointing: memory vs time
    python benchmarks/backbone_speed.py --device cuda --batch-size 64 --threads 16
    python benchmarks/backbone_speed.py --models focalnet_tiny_srf@bf16 timm:focalnet_tiny_srf@fp32   # fast path
    python benchmarks/backbone_speed.py --quick                 # smoke run: batch 2, one timed iteration
    OMP_WAIT_POLICY=PASSIVE python benchmarks/backbone_speed.py --clock cpu   # on a machine shared with other jobs
    python benchmarks/backbone_speed.py --malloc retain         # glibc keeps freed memory: no page faults per step

Every model gets the same input, precision, memory format, compile setting and drop path rate (``--drop-path``).
Forward: ``inference_mode``, eval (ours then takes its fused oneDNN path on CPU, as it does by default). Train step:
forward, cross-entropy, backward, AdamW step (the tasks' fused AdamW), in train mode.
Each figure is the median of ``--repeats`` timed runs after ``--warmup`` untimed ones; the models are timed in
turn within each round, so a change of machine load hits all of them alike, and the load average is printed at the
start and the end. ``--clock cpu`` times the process's CPU time (all threads) instead of the wall clock: on a
machine shared with other jobs, OpenMP threads preempted by them stall each other and the wall clock of a 2-thread
step varies several-fold, while the CPU time stays within a few per cent (run it with ``OMP_WAIT_POLICY=PASSIVE``,
so that waiting threads sleep instead of spinning on the clock). img/s are then images per CPU-second over the
threads, not per wall-second. ``GFLOP/s`` is the model's
multiply-accumulate count x 2 per image times forward img/s; ``%peak`` divides it by the dense matmul rate this
machine reaches in the same precision (measured first). Memory: ``act. MB`` is what autograd saves for the backward
pass of one training forward (exact, counted over distinct storages; the dominant, implementation-dependent part
of training memory; under ``--grad-checkpointing`` it leaves out the block inputs that checkpointing keeps itself);
``peak MB`` is the whole memory a train step adds: on CUDA the allocator's peak, on CPU the rise of the resident
size over a first step in a fresh process (weights' gradients and AdamW state included; ``--peak-steps N``: over
the first N steps, where later steps' fragmentation of the heap and libraries' cached buffers show). Our 1×1 layers'
library choices are kept on disk (``focalbench.models.autotune_cache``), so those fresh processes take the choices
the speed runs made, as a user's later runs do; ``FOCALBENCH_AUTOTUNE_CACHE=0`` has each process time them again, as
a first run does (the header says which). Both memory columns are taken on the eager model, also under
``--compile``. ``faults fwd/train``: minor page faults per forward / train
step (each a fresh 4 KiB page from the kernel). With glibc's default malloc a step faults its large activations in
anew (blocks over 32 MB are mmap-ed per call, the heap's top is returned when mostly free), which costs the models
unequally; ``--malloc retain`` keeps freed memory in the process, as jemalloc or tcmalloc would, and the ratios are
then those of the computation alone. The header names the setting (also ``MALLOC_*_`` variables set outside).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext

import timm
import torch

from focalbench.memory import retain_freed_memory
from focalbench.models import autotune_cache, create_model, fused, pointwise
from focalbench.tasks.optim import default_optimizer  # not .base: that imports Lightning

PAIRS = {"focalnet_tiny_srf": "timm:focalnet_tiny_srf", "focalnet_tiny_lrf": "timm:focalnet_tiny_lrf"}
DEFAULT_MODELS = [
    "focalnet_tiny_srf", "timm:focalnet_tiny_srf", "focalnet_tiny_lrf", "timm:focalnet_tiny_lrf",
    "timm:swin_tiny_patch4_window7_224", "timm:convnext_tiny",
]  # fmt: skip


def build(spec: str, drop_path_rate: float = 0.1) -> torch.nn.Module:
    """Ours by variant name, timm's as ``timm:NAME``; random weights, the same stochastic depth for all (the models'
    own defaults differ: 0.1 for ours and Swin, 0 for timm's FocalNet and ConvNeXt)."""
    name = spec.split("@")[0]
    if name.startswith("timm:"):
        return timm.create_model(name[5:], pretrained=False, drop_path_rate=drop_path_rate)
    return create_model(name, drop_path_rate=drop_path_rate)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def autocast(args, spec: str = "") -> object:
    """The model's precision: ``--precision``, or the ``@fp32`` / ``@bf16`` suffix of its spec."""
    if precision_of(spec, args) == "fp32":
        return nullcontext()
    return torch.autocast(args.device, dtype=torch.bfloat16)


def clock(args) -> Callable[[], float]:
    """``--clock``: the wall clock, or the process's CPU time (all threads)."""
    return time.process_time if getattr(args, "clock", "wall") == "cpu" else time.perf_counter


def timed(fn, args) -> float:
    """Median seconds of ``args.repeats`` runs after ``args.warmup`` untimed ones."""
    return interleaved({"fn": fn}, args)["fn"]


def interleaved(fns: dict, args, faults: dict[str, float] | None = None) -> dict[str, float]:
    """Median seconds per function, timing them in turn within each round, so a change of machine load during
    the benchmark hits every model alike and the ratios stay fair. ``faults``, if given, receives the median
    count of minor page faults per call (fresh pages the allocator took from the kernel)."""
    now = clock(args)
    for fn in fns.values():
        for _ in range(args.warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    counts: dict[str, list[int]] = {name: [] for name in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            synchronize(args.device)
            before, start = minor_faults(), now()
            fn()
            synchronize(args.device)
            times[name].append(now() - start)
            counts[name].append(minor_faults() - before)
    if faults is not None:
        faults.update({name: statistics.median(values) for name, values in counts.items()})
    return {name: statistics.median(values) for name, values in times.items()}


def minor_faults() -> int:
    """Minor page faults of this process so far (all threads)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def add_timing_arguments(parser: argparse.ArgumentParser, warmup: int, repeats: int, clock: bool = True) -> None:
    """The options every benchmark times with: device, threads, untimed and timed runs, the clock (unless the
    script needs the wall clock) and what the allocator does with freed memory."""
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=warmup)
    parser.add_argument("--repeats", type=int, default=repeats)
    if clock:
        parser.add_argument(
            "--clock", choices=["wall", "cpu"], default="wall", help="cpu: the process's CPU time (shared machines)"
        )
    parser.add_argument(
        "--malloc", choices=["default", "retain"], default="default", help="retain: glibc keeps freed memory (Linux)"
    )


def apply_malloc_setting(args) -> None:
    """``--malloc``: what this process (or a spawned one measuring it) does with freed memory."""
    if args.malloc == "retain" and not retain_freed_memory():  # as the CLI's CPU runs do
        raise SystemExit("--malloc retain: mallopt failed (glibc's malloc is needed)")


def malloc_setting(args) -> str:
    """The allocator setting the figures were taken under, for the header."""
    if args.malloc == "retain":
        return "malloc retain (no mmap, no trim)"
    env = [f"{k}={v}" for k, v in os.environ.items() if k.startswith("MALLOC_") and k.endswith("_")]
    return "malloc " + (" ".join(env) if env else "glibc default")


def autotune_setting() -> str:
    """Where our 1×1 layers' library choices come from in a fresh process, for the header."""
    if not pointwise.autotune_enabled():
        return "1x1 autotuning off"
    path = autotune_cache.cache_path()
    if path is None:
        return "1x1 choices timed in every process (FOCALBENCH_AUTOTUNE_CACHE=0)"
    return f"1x1 choices kept in {path}"


def load_average() -> str:
    """The 1-minute load average (``uptime``'s first figure) against the core count."""
    return f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"


def precision_of(spec: str, args) -> str:
    """A model's precision: the ``@fp32`` / ``@bf16`` suffix of its spec, else ``--precision``."""
    return spec.split("@")[1] if "@" in spec else args.precision


def matmul_peak(args, precision: str) -> float:
    """The best dense GEMM rate (GFLOP/s) this machine reaches in ``precision``: ``torch.mm`` at two sizes into a
    preallocated output and a large 1x1 convolution in channels_last (oneDNN), plain and (CPU) accumulating into a
    preallocated output; the ceiling for convolution-bound models. The preallocated outputs take no fresh pages,
    so the peak does not depend on the allocator (see :func:`peak_convolutions`)."""
    if precision == "bf16" and args.device == "cpu" and not fused.ONEDNN_BF16:
        # The reference kernels would take many minutes over the peak's sizes alone, and time nothing users run.
        raise SystemExit(
            "bf16 on this CPU: it has no bf16 kernels (oneDNN's need AVX-512 or AVX-NE-CONVERT), so bf16 runs on "
            "reference kernels; measure fp32 here (--precision fp32, no @bf16 models)"
        )
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    rates = []
    for n in (2048, 4096) if args.device == "cpu" else (8192,):
        a, b, c = (torch.randn(n, n, device=args.device, dtype=dtype) for _ in range(3))
        rates.append(2 * n**3 / timed(lambda a=a, b=b, c=c: torch.mm(a, b, out=c), args) / 1e9)
    convolutions, flop = peak_convolutions(args.device, dtype)
    with torch.no_grad():
        rates.extend(flop / timed(convolution, args) / 1e9 for convolution in convolutions)
    return max(rates)


def peak_convolutions(device: str, dtype: torch.dtype) -> tuple[list[Callable[[], object]], int]:
    """The peak's 1x1 convolution (512 -> 512 channels, 8 x 56 x 56, channels_last) and its FLOP count: plain, and
    on CPU also oneDNN's in-place form that adds the result into a preallocated output. The plain one's 51 MB
    output is a fresh ``mmap`` per call under glibc's default malloc, whose page faults cost it up to a sixth of
    its rate on this project's CPU; the in-place one allocates nothing."""
    x = torch.randn(8, 512, 56, 56, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(512, 512, 1, 1, device=device, dtype=dtype)
    convolutions = [lambda: torch.nn.functional.conv2d(x, w)]
    if device == "cpu" and torch.backends.mkldnn.is_available():
        out = torch.zeros_like(x)
        args = (None, [0, 0], [1, 1], [1, 1], 1, "add", None, None, [], None)
        convolutions.append(lambda: torch.ops.mkldnn._convolution_pointwise_.binary(out, x, w, *args))
    return convolutions, 2 * x.numel() * 512


def gmacs(name: str, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build(name).eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(torch.empty(1, 3, size, size))
    return counter.get_total_flops() / 2 / 1e9


def prepare(model: torch.nn.Module, args, compiled: bool | None = None) -> torch.nn.Module:
    model = model.to(args.device)
    if getattr(args, "unfused", False) and hasattr(model, "set_fused_inference"):  # only backbone_speed has it
        model.set_fused_inference(False)
    model.set_grad_checkpointing(args.grad_checkpointing)  # ours and timm's models alike
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if (args.compile if compiled is None else compiled) else model


def batch(args) -> tuple[torch.Tensor, torch.Tensor]:
    """The benchmark's images and labels (seed 0)."""
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=args.device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 1000, (args.batch_size,), device=args.device)


def train_step(model: torch.nn.Module, spec: str, x: torch.Tensor, y: torch.Tensor, args) -> Callable[[], None]:
    """One training step on (x, y): forward in the model's precision, cross-entropy, backward, AdamW step."""
    optimizer = default_optimizer(model.parameters())  # the tasks' AdamW (fused), as the configs train

    def run() -> None:
        with autocast(args, spec):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return run


def measure(names: list[str], args) -> dict[str, dict]:
    x, y = batch(args)
    models = {name: prepare(build(name, args.drop_path), args) for name in names}
    results = {name: {"name": name, "compile_s": 0.0} for name in names}

    def forward(model, spec):
        def run() -> None:
            with torch.inference_mode(), autocast(args, spec):
                model(x)

        return run

    for name, model in models.items():
        model.eval()
        start = time.perf_counter()
        forward(model, name)()  # the first call compiles
        synchronize(args.device)
        if args.compile:
            results[name]["compile_s"] = time.perf_counter() - start
    faults: dict[str, float] = {}
    for name, seconds in interleaved({n: forward(m, n) for n, m in models.items()}, args, faults).items():
        results[name]["fwd"] = args.batch_size / seconds
        results[name]["fwd_faults"] = faults[name]

    train_steps = {n: train_step(m.train(), n, x, y, args) for n, m in models.items()}
    for name, step in train_steps.items():
        start = time.perf_counter()
        step()  # the first call compiles the training graph (forward and backward)
        synchronize(args.device)
        if args.compile:
            results[name]["compile_s"] += time.perf_counter() - start
    for name, seconds in interleaved(train_steps, args, faults).items():
        results[name]["train"] = args.batch_size / seconds
        results[name]["train_faults"] = faults[name]
    if args.device == "cuda":
        for name, model in models.items():
            torch.cuda.reset_peak_memory_stats()
            train_step(model, name, x, y, args)()
            results[name]["mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return results


def saved_activation_mb(model: torch.nn.Module, args, spec: str = "") -> float:
    """Bytes autograd keeps for the backward pass of one training forward (activations; parameters excluded),
    counted through ``saved_tensors_hooks`` over distinct storages: exact and independent of the allocator."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=args.device)
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast(args, spec):
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values()) / 2**20


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))


def _first_step_peak(spec: str, args, connection) -> None:
    torch.set_num_threads(args.threads)
    apply_malloc_setting(args)
    step = train_step(prepare(build(spec, args.drop_path), args, compiled=False).train(), spec, *batch(args), args)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets the high-water mark VmHWM to the current resident size
    before = _status_kb("VmRSS:")
    for _ in range(args.peak_steps):
        step()
    connection.send((_status_kb("VmHWM:") - before) / 1024)


def cpu_step_peak_mb(spec: str, args, runs: int = 3) -> float:
    """Peak resident memory (MB) one train step (``args.peak_steps`` steps) adds on CPU (activations, workspaces,
    gradients, AdamW state): the kernel's high-water mark after the step minus the resident size before it, each
    time in a fresh (spawned) process, so that memory the allocator keeps from earlier steps cannot hide any of it;
    the median of ``runs`` (single runs vary by about 3 %). Linux only."""
    context = multiprocessing.get_context("spawn")  # a fork would inherit OpenMP's threads and hang
    peaks = []
    for _ in range(runs):
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=_first_step_peak, args=(spec, args, sender))
        process.start()
        peaks.append(receiver.recv())
        process.join()
    return statistics.median(peaks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models",
        nargs="+",
        default=DEFAULT_MODELS,
        help="ours by variant name, timm as timm:NAME; NAME@bf16 / NAME@fp32 overrides --precision for one model",
    )
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument(
        "--unfused", action="store_true", help="our models' forward without the fused oneDNN post-ops (plain ops)"
    )
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--grad-checkpointing", action="store_true", help="activation checkpointing in every model")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate of every model")
    add_timing_arguments(parser, warmup=2, repeats=5)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: batch 2, no warm-up, one timed iteration, one peak-memory run"
    )
    parser.add_argument("--peak-steps", type=int, default=1, help="CPU peak MB over this many first train steps")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.batch_size, args.warmup, args.repeats = 2, 0, 1
    apply_malloc_setting(args)
    torch.set_num_threads(args.threads)

    if args.clock == "cpu" and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print("# note: --clock cpu without OMP_WAIT_POLICY=PASSIVE counts OpenMP threads spinning while they wait")
    start_load = load_average()
    peaks = {p: matmul_peak(args, p) for p in sorted({precision_of(name, args) for name in args.models})}
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(
        f"# {device}; {args.precision}; compile={args.compile}; channels_last={args.channels_last}; "
        f"grad_checkpointing={args.grad_checkpointing}; "
        f"batch {args.batch_size}; {args.image_size} px; median of {args.repeats}; {args.clock} clock; "
        f"matmul peak {', '.join(f'{p} {rate:.0f}' for p, rate in peaks.items())} GFLOP/s (measured now); "
        f"{malloc_setting(args)}; peak MB over {args.peak_steps} step(s); {autotune_setting()}; "
        f"{start_load} at the start"
    )
    results = measure(args.models, args)
    for name, result in results.items():
        result["gflops"] = 2 * gmacs(name, args.image_size) * result["fwd"]
        model = prepare(build(name, args.drop_path), args, compiled=False)
        result["saved_mb"] = saved_activation_mb(model, args, name)
        if args.device == "cpu" and sys.platform == "linux":
            result["mem_mb"] = cpu_step_peak_mb(name, args, runs=1 if args.quick else 3)

    columns = f"{'fwd img/s':>10} {'train img/s':>12} {'GFLOP/s':>8} {'%peak':>6} {'act. MB':>8} {'peak MB':>8}"
    columns += f" {'compile s':>9} {'faults fwd/train':>16}"
    print(f"{'model':<36} {columns}")
    for name, r in results.items():
        peak_mb = f"{r['mem_mb']:.0f}" if "mem_mb" in r else "-"
        r["peak_fraction"] = r["gflops"] / peaks[precision_of(name, args)]
        print(
            f"{name:<36} {r['fwd']:>10.1f} {r['train']:>12.2f} {r['gflops']:>8.0f} {100 * r['peak_fraction']:>5.0f}% "
            f"{r['saved_mb']:>8.0f} {peak_mb:>8} {r['compile_s']:>9.1f} "
            f"{r['fwd_faults']:>7.0f}/{r['train_faults']:<8.0f}"
        )
    print("\nratios, ours / timm (same settings unless a model names its own precision):")
    pairs = dict(PAIRS)
    for n in results:  # ours@precision against timm's same variant, whatever precision that one names
        peers = [m for m in results if m.split("@")[0] == "timm:" + n.split("@")[0]]
        if "@" in n and not n.startswith("timm:") and peers:
            pairs[n] = peers[0]
    for ours, peer in pairs.items():
        if ours in results and peer in results:
            a, b = results[ours], results[peer]
            mem = f", activation memory {a['saved_mb'] / b['saved_mb']:.2f}x"
            if "mem_mb" in a and "mem_mb" in b:
                mem += f", peak memory {a['mem_mb'] / b['mem_mb']:.2f}x"
            speed = f"forward {a['fwd'] / b['fwd']:.2f}x, train step {a['train'] / b['train']:.2f}x"
            print(f"  {ours} vs {peer}: {speed}{mem}")
    print(f"# {load_average()} at the end")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "matmul_peak_gflops": peaks, "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
