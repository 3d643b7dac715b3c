"""Training-step speed of the U-Net: throughput, achieved FLOP/s, peak memory; SDPA vs einsum.

For every configuration in `CONFIGS` and every option set (`channels_last`, `bf16` autocast,
`torch.compile`, or none), both attention backends are built side by side from the same seed
(same weights, same data): `sdpa` (`F.scaled_dot_product_attention`, our default) and `einsum`
(the spec's two einsums over a `[batch, i, j, heads]` score tensor). After warm-up, timed blocks
of full training steps (DDPM loss forward, backward, AdamW step) alternate between the two
(A B B A ...), and each backend's time is the median over its blocks. Interleaving matters on a
shared machine: a burst of load from another process hits both backends instead of whichever
happened to run at the time.

FLOPs are counted once per configuration with `torch.utils.flop_counter.FlopCounterMode` on one
eager fp32 training step at batch 1, scaled by the batch size (every counted op is linear in it),
with the einsum backend: the counter has no formula for the CPU SDPA kernel, and both backends do
the same maths. Achieved FLOP/s is set against a large matmul timed in the same process.

A second part times `AttentionBlock` alone (forward + backward) at a few feature-map sizes.

    python benchmarks/unet_speed.py                                   # CPU, default configs
    python benchmarks/unet_speed.py --device cuda --markdown benchmarks/results/gpu.md
"""

from __future__ import annotations

import os

# Idle OpenMP threads sleep instead of spinning. On a CPU shared with other processes, spinning
# threads take cores from the threads they wait for, and a training step of the small model went
# from 0.5 s to over 30 s on two busy cores. libgomp reads this once, when torch loads it, hence
# before the imports below; set OMP_WAIT_POLICY=ACTIVE yourself to keep spinning.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from contextlib import nullcontext, suppress  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from model_configs import net_kwargs  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from ddpm_unet.models.diffusion import GaussianDiffusion  # noqa: E402
from ddpm_unet.models.unet import AttentionBlock, UNet  # noqa: E402

# Model configurations: `model` goes to `UNet(**model)`; `batch_size` per device type.
CONFIGS: dict[str, dict[str, Any]] = {
    # The spec's default network in our channel convention (168,899,011 parameters).
    "spec_default": {
        "model": dict(
            image_channels=3,
            n_channels=64,
            ch_mults=(1, 2, 4, 16),
            is_attn=(False, False, True, True),
            n_blocks=2,
        ),
        "image_size": 32,
        "batch_size": {"cpu": 4, "cuda": 128},
    },
    # configs/model/unet_ddpm_cifar10.yaml: the DDPM paper's CIFAR-10 network (34,974,339
    # parameters here).
    "ddpm_cifar10": {
        "model": net_kwargs("unet_ddpm_cifar10", "cifar10"),
        "image_size": 32,
        "batch_size": {"cpu": 4, "cuda": 128},
    },
    # configs/model/unet_small.yaml on digits: the default network (grayscale 8x8).
    "unet_small": {
        "model": net_kwargs("unet_small", "digits"),
        "image_size": 8,
        "batch_size": {"cpu": 64, "cuda": 512},
    },
}
# unet_small before the time-to-quality change: DDPM's two blocks per level.
CONFIGS["unet_small_2blocks"] = {
    **CONFIGS["unet_small"],
    "model": {**CONFIGS["unet_small"]["model"], "n_blocks": 2},
}

BACKENDS = ("sdpa", "einsum")
OPTION_FLAGS = ("channels_last", "bf16", "compile")
# On CPU the GPU-oriented options are opt-in: compiling takes minutes on two cores.
DEFAULT_OPTIONS = {
    "cpu": ["none"],
    "cuda": ["none", "channels_last", "bf16", "channels_last+bf16", "channels_last+bf16+compile"],
}
DEFAULT_STEPS = {"cpu": 3, "cuda": 20}
DEFAULT_WARMUP = {"cpu": 1, "cuda": 5}
# Steps per timed block. One on CPU (steps take seconds); several on GPU so that kernel launches
# of consecutive steps overlap, as they do in training.
DEFAULT_BLOCK = {"cpu": 1, "cuda": 5}
# Attention micro-benchmark: feature-map sizes, channels, batch.
DEFAULT_ATTN_SIZES = {"cpu": [8, 16, 32], "cuda": [8, 16, 32, 64]}
ATTN_CHANNELS = 256
ATTN_BATCH = {"cpu": 4, "cuda": 32}
# Reference matmul size: large enough to reach the device's best dense throughput.
MATMUL_SIZE = {"cpu": 2048, "cuda": 8192}

MIB = 2**20


# --------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------
def _proc_status_kib(field_name: str) -> int | None:
    """A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`), or None off Linux."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Reset the kernel's peak-RSS counter (`VmHWM`) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def _release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS.

    Without `malloc_trim`, memory freed earlier (by the other backend's step, say) can stay
    resident; the next step reuses it without raising RSS, and its peak would be under-counted.
    """
    gc.collect()
    with suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class MemoryMeter:
    """Current and peak memory of this process on one device, in bytes.

    * CUDA: `torch.cuda.memory_allocated` / `max_memory_allocated` (tensors only; neither the
      caching allocator's reserve nor the CUDA context).
    * CPU: resident set size (`VmRSS`) and its peak (`VmHWM`, which writing 5 to
      `/proc/self/clear_refs` resets). Where that reset is refused, `getrusage`'s `ru_maxrss`
      stands in, which only tells a peak that sets a new high for the process (otherwise the
      peak is unknown). `tracemalloc` would not see torch's allocations at all.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._window_start = 0
        self._maxrss_at_open = 0
        self._can_reset = True

    @staticmethod
    def describe(device: torch.device) -> str:
        """How the reported peak is measured, for the report header."""
        if device.type == "cuda":
            where = "`torch.cuda.max_memory_allocated` (tensors only)"
        else:
            where = (
                "resident set size: `VmRSS` and its peak `VmHWM` (reset via "
                "`/proc/self/clear_refs`; fallback `getrusage` max RSS), includes allocator slack"
            )
        return (
            f"peak memory = {where}; per backend, memory held after warm-up (weights, gradients, "
            "AdamW state) above the level before its model was built, plus the largest rise "
            "during one further training step"
        )

    def current(self) -> int:
        """Memory in use now (after releasing what is free)."""
        _release_freed_memory()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            return torch.cuda.memory_allocated(self.device)
        return (_proc_status_kib("VmRSS") or 0) * 1024

    def open_window(self) -> None:
        """Start measuring a peak from the current level."""
        self._window_start = self.current()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._can_reset = _reset_rss_peak() and _proc_status_kib("VmHWM") is not None
            self._maxrss_at_open = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def window_rise(self) -> int | None:
        """How far the peak rose above the window's starting level (None if unknowable)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif self._can_reset:
            peak = (_proc_status_kib("VmHWM") or 0) * 1024
        else:
            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
            if maxrss <= self._maxrss_at_open:
                return None
            peak = maxrss * 1024
        return max(peak - self._window_start, 0)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, bf16: bool) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def _error_text(error: BaseException) -> str:
    first_line = str(error).splitlines()[0][:100] if str(error) else ""
    return f"{type(error).__name__}: {first_line}"


def parse_option_set(text: str) -> frozenset[str]:
    """`"channels_last+bf16"` -> `{"channels_last", "bf16"}`; `"none"` -> the empty set."""
    if text == "none":
        return frozenset()
    flags = frozenset(text.split("+"))
    unknown = flags - set(OPTION_FLAGS)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown option(s) {sorted(unknown)} in {text!r}: combine {OPTION_FLAGS} with '+', "
            "or give 'none'."
        )
    return flags


def option_label(options: frozenset[str]) -> str:
    return "+".join(flag for flag in OPTION_FLAGS if flag in options) or "none"


def matmul_flops_per_s(
    device: torch.device, dtype: torch.dtype, max_size: int
) -> tuple[float, int]:
    """Best FLOP/s of a square matmul in `dtype` (the reference for "% of matmul"), and its size.

    The size doubles from 256 up to `max_size` while one product takes under 0.1 s: CPUs
    without native bf16 run it emulated at about 1 GFLOP/s, where a 2048 product takes 17 s.
    """
    size = 256
    while True:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        a @ b  # first call: library initialisation, kernel selection
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        single = time.perf_counter() - start
        if single >= 0.1 or size >= max_size:
            break
        size *= 2
    repeats = max(1, min(50, int(0.2 / max(single, 1e-6))))
    best = single
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        _sync(device)
        best = min(best, (time.perf_counter() - start) / repeats)
    return 2 * size**3 / best, size


def count_training_flops(model_kwargs: dict[str, Any], image_size: int) -> int:
    """FLOPs of one forward + backward at batch 1 (eager, fp32, einsum attention, on CPU).

    The optimiser's element-wise update is not counted (FlopCounterMode counts matmuls and
    convolutions, which dominate).
    """
    torch.manual_seed(0)
    model = UNet(**{**model_kwargs, "attn_backend": "einsum"})
    diffusion = GaussianDiffusion()
    x0 = torch.randn(1, model.image_channels, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        diffusion.loss(model, x0).backward()
    return counter.get_total_flops()


def _interleaved_medians(
    steps: dict[str, Callable[[], None]], rounds: int, block: int, device: torch.device
) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternating blocks of `block` calls.

    Round `r` runs the functions in order, round `r + 1` in reverse (A B, B A, ...), so a slow
    period of the machine is shared instead of landing on one of them.
    """
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            _sync(device)
            start = time.perf_counter()
            for _ in range(block):
                steps[name]()
            _sync(device)
            times[name].append((time.perf_counter() - start) / block)
    return {name: statistics.median(values) for name, values in times.items()}


# --------------------------------------------------------------------------------------------
# Whole training step
# --------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """One (configuration, options, backend) measurement."""

    config: str
    options: str
    backend: str
    batch_size: int
    params: int | None = None
    step_s: float | None = None
    peak_mib: float | None = None
    flops_per_step: float | None = None
    error: str | None = None

    @property
    def images_per_s(self) -> float | None:
        return None if self.step_s is None else self.batch_size / self.step_s

    @property
    def flops_per_s(self) -> float | None:
        if self.step_s is None or self.flops_per_step is None:
            return None
        return self.flops_per_step / self.step_s


def _make_training_step(
    spec: dict[str, Any],
    backend: str,
    options: frozenset[str],
    device: torch.device,
    batch_size: int,
) -> tuple[Callable[[], None], int]:
    """Build model, optimiser and data; return the training-step closure and the model's size."""
    torch.manual_seed(0)  # same weights and data for both backends
    model = UNet(**{**spec["model"], "attn_backend": backend}).to(device)
    params = sum(p.numel() for p in model.parameters())
    memory_format = torch.channels_last if "channels_last" in options else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    diffusion = GaussianDiffusion().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4)
    size = spec["image_size"]
    x0 = torch.randn(batch_size, model.image_channels, size, size, device=device)
    x0 = x0.contiguous(memory_format=memory_format)
    forward: Callable[..., torch.Tensor] = torch.compile(model) if "compile" in options else model
    bf16 = "bf16" in options

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, bf16):
            loss = diffusion.loss(forward, x0)
        loss.backward()
        optimizer.step()

    return step, params


def time_training(
    name: str,
    spec: dict[str, Any],
    options: frozenset[str],
    device: torch.device,
    batch_size: int,
    steps: int,
    warmup: int,
    block: int,
    flops_per_image: int,
) -> list[TrainResult]:
    """Time both attention backends of one configuration and option set, interleaved."""
    label = option_label(options)
    results = {
        backend: TrainResult(
            config=name,
            options=label,
            backend=backend,
            batch_size=batch_size,
            flops_per_step=float(flops_per_image * batch_size),
        )
        for backend in BACKENDS
    }
    meter = MemoryMeter(device)
    if "compile" in options:
        # Start from an empty dynamo cache, so earlier models cannot push this one past the
        # recompilation limit (which would silently fall back to eager).
        torch.compiler.reset()
    step_fns: dict[str, Callable[[], None]] = {}
    held: dict[str, int] = {}
    for backend in BACKENDS:
        try:
            before = meter.current()
            step, results[backend].params = _make_training_step(
                spec, backend, options, device, batch_size
            )
            for _ in range(warmup):
                step()
            held[backend] = meter.current() - before
            step_fns[backend] = step
        except Exception as error:  # an OOM or a compile failure: report it and go on
            results[backend].error = _error_text(error)
    if step_fns:
        rounds = max(1, math.ceil(steps / block))
        try:
            medians = _interleaved_medians(step_fns, rounds, block, device)
            for backend, seconds in medians.items():
                results[backend].step_s = seconds
            # Memory apart from the timing: releasing freed pages before a step (so its peak
            # is seen) makes that step pay for fresh page faults.
            for backend, step in step_fns.items():
                meter.open_window()
                step()
                rise = meter.window_rise()
                if rise is not None:
                    results[backend].peak_mib = (held[backend] + rise) / MIB
        except Exception as error:
            for backend in step_fns:
                results[backend].error = _error_text(error)
                results[backend].step_s = None
    return [results[backend] for backend in BACKENDS]


# --------------------------------------------------------------------------------------------
# AttentionBlock alone
# --------------------------------------------------------------------------------------------
@dataclass
class AttnResult:
    """AttentionBlock forward + backward at one feature-map size, for both backends."""

    size: int
    dtype: str
    batch_size: int
    ms: dict[str, float] = field(default_factory=dict)
    peak_mib: dict[str, float | None] = field(default_factory=dict)
    error: str | None = None

    @property
    def score_mib(self) -> float:
        """Size of one `[b, i, j, heads]` score tensor (1 head) in the compute dtype."""
        element = 2 if self.dtype == "bf16" else 4
        return self.batch_size * (self.size * self.size) ** 2 * element / MIB


def time_attention(
    size: int, dtype: str, device: torch.device, batch_size: int, steps: int, warmup: int
) -> AttnResult:
    """Time `AttentionBlock(ATTN_CHANNELS)` forward + backward, both backends interleaved."""
    result = AttnResult(size=size, dtype=dtype, batch_size=batch_size)
    bf16 = dtype == "bf16"
    meter = MemoryMeter(device)
    try:
        torch.manual_seed(0)
        x = torch.randn(batch_size, ATTN_CHANNELS, size, size, device=device)
        steps_fns: dict[str, Callable[[], None]] = {}
        for backend in BACKENDS:
            block = AttentionBlock(ATTN_CHANNELS, backend=backend).to(device)

            def step(block: AttentionBlock = block) -> None:
                with _autocast(device, bf16):
                    out = block(x)
                out.float().sum().backward()

            for _ in range(warmup):
                step()
            steps_fns[backend] = step
        result.ms = {
            backend: seconds * 1e3
            for backend, seconds in _interleaved_medians(steps_fns, steps, 1, device).items()
        }
        for backend, step in steps_fns.items():
            # Rise during one call: activations, scores and their gradients (the weights and
            # their gradients are already allocated).
            meter.open_window()
            step()
            rise = meter.window_rise()
            result.peak_mib[backend] = None if rise is None else rise / MIB
    except Exception as error:  # an OOM at a large size must not end the run
        result.error = _error_text(error)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------
def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _device_description(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    cpu = platform.processor() or platform.machine()
    with suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"CPU: {cpu}, {cores} cores available, torch threads {torch.get_num_threads()}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
    )


def _train_tables(train: list[TrainResult], matmul: dict[str, float]) -> list[str]:
    rows = []
    for r in train:
        params = "n/a" if r.params is None else f"{r.params:,}"
        head = [r.config, params, str(r.batch_size), r.options, r.backend]
        if r.error:
            rows.append([*head, f"failed: {r.error}", "", "", "", "", ""])
            continue
        ref = matmul.get("bf16" if "bf16" in r.options else "fp32")
        fraction = None if ref is None or r.flops_per_s is None else r.flops_per_s / ref
        rows.append(
            [
                *head,
                _fmt(None if r.step_s is None else r.step_s * 1e3, ",.1f"),
                _fmt(r.images_per_s, ",.1f"),
                _fmt(None if r.flops_per_step is None else r.flops_per_step / 1e9, ",.1f"),
                _fmt(None if r.flops_per_s is None else r.flops_per_s / 1e9, ",.1f"),
                _fmt(None if fraction is None else 100 * fraction, ".1f"),
                _fmt(r.peak_mib, ",.0f"),
            ]
        )
    header = ["config", "params", "batch", "options", "attention", "ms/step", "img/s"]
    header += ["GFLOP/step", "GFLOP/s", "% of matmul", "peak MiB"]
    lines = ["## Training step", "", _table(header, rows), ""]
    lines.append(
        "% of matmul: achieved FLOP/s over the reference matmul of the run's compute dtype "
        "(bf16 for `bf16` runs, fp32 otherwise)."
    )

    by_key = {(r.config, r.options, r.backend): r for r in train}
    rows = []
    for r in train:
        other = by_key.get((r.config, r.options, "einsum"))
        if r.backend != "sdpa" or other is None or r.step_s is None or other.step_s is None:
            continue
        rows.append(
            [
                r.config,
                r.options,
                _fmt(r.images_per_s, ",.1f"),
                _fmt(other.images_per_s, ",.1f"),
                f"{other.step_s / r.step_s:.2f}x",
                _fmt(r.peak_mib, ",.0f"),
                _fmt(other.peak_mib, ",.0f"),
            ]
        )
    header = ["config", "options", "sdpa img/s", "einsum img/s"]
    header += ["sdpa speed-up (einsum time / sdpa time)", "sdpa peak MiB", "einsum peak MiB"]
    lines += ["", "## SDPA vs einsum attention (whole training step)", "", _table(header, rows)]
    return lines


def _attention_table(attn: list[AttnResult]) -> list[str]:
    rows = []
    for a in attn:
        sdpa, einsum = a.ms.get("sdpa"), a.ms.get("einsum")
        ratio = None if sdpa is None or einsum is None else einsum / sdpa
        rows.append(
            [
                f"{a.size}x{a.size}",
                f"{a.size * a.size:,}",
                str(a.batch_size),
                a.dtype,
                f"{a.score_mib:,.1f}",
                _fmt(sdpa, ",.2f"),
                _fmt(einsum, ",.2f"),
                "n/a" if ratio is None else f"{ratio:.2f}x",
                _fmt(a.peak_mib.get("sdpa"), ",.1f"),
                _fmt(a.peak_mib.get("einsum"), ",.1f"),
                a.error or "",
            ]
        )
    header = ["map", "tokens", "batch", "dtype", "one score tensor MiB", "sdpa ms", "einsum ms"]
    header += ["einsum / sdpa", "sdpa step MiB", "einsum step MiB", "error"]
    return [
        f"## AttentionBlock alone ({ATTN_CHANNELS} channels, 1 head, forward + backward)",
        "",
        _table(header, rows),
        "",
        "one score tensor: the `[b, i, j, heads]` tensor the einsum path materialises (it also "
        "keeps its softmax for backward); step MiB: memory rise during one forward + backward "
        "(weights and their gradients already allocated).",
    ]


def report(
    args: argparse.Namespace,
    device: torch.device,
    settings: dict[str, Any],
    matmul: dict[str, float],
    matmul_sizes: dict[str, int],
    train: list[TrainResult],
    attn: list[AttnResult],
    load: tuple[tuple[float, ...], tuple[float, ...]] | None,
    elapsed_s: float,
) -> str:
    """The whole result as Markdown."""
    reference = ", ".join(
        f"{dtype} {matmul_sizes[dtype]}x{matmul_sizes[dtype]}: {flops / 1e9:,.1f} GFLOP/s"
        for dtype, flops in matmul.items()
    )
    command = " ".join(shlex.quote(a) for a in ["benchmarks/unet_speed.py", *sys.argv[1:]])
    lines = [
        "# U-Net training-step benchmark",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- device: {_device_description(device)}",
        f"- torch {torch.__version__}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}",
        f"- command: `python {command}`",
        "- settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()),
        f"- matmul reference (same run, best of 3): {reference}",
        "- step = DDPM loss forward + backward + AdamW step on random images; sdpa and einsum "
        "models are built from the same seed and timed in alternating blocks; time = median "
        "over blocks",
        "- FLOPs: `FlopCounterMode` on one eager fp32 step (forward + backward, einsum backend), "
        "scaled by the batch; the same count serves both backends and all options",
        f"- {MemoryMeter.describe(device)}",
        f"- total benchmark time: {elapsed_s:.0f} s",
    ]
    if device.type == "cuda":
        lines.append(
            f"- TF32: matmul {torch.backends.cuda.matmul.allow_tf32}, cuDNN convolutions "
            f"{torch.backends.cudnn.allow_tf32} (fp32 runs' convolutions may use TF32 while the "
            "fp32 matmul reference does not)"
        )
    if load is not None:
        start, end = (", ".join(f"{v:.2f}" for v in values) for values in load)
        lines.append(f"- load average (1, 5, 15 min) at start: {start}; at end: {end}")
    if args.note:
        lines.append(f"- note: {args.note}")
    if train:
        lines += ["", *_train_tables(train, matmul)]
    if attn:
        lines += ["", *_attention_table(attn)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument(
        "--configs",
        nargs="+",
        default=list(CONFIGS),
        choices=list(CONFIGS),
        metavar="NAME",
        help=f"configurations from CONFIGS (default: all of {list(CONFIGS)})",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="batch for every configuration (default: per config and device, see CONFIGS)",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per backend (cpu 3, cuda 20)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (cpu 1, cuda 5)")
    parser.add_argument(
        "--block", type=int, default=None, help="steps per timed block (cpu 1, cuda 5)"
    )
    parser.add_argument(
        "--options",
        nargs="+",
        type=parse_option_set,
        default=None,
        help="option sets, each 'none' or flags from channels_last, bf16, compile joined by '+' "
        f"(default cpu: {DEFAULT_OPTIONS['cpu']}; cuda: {DEFAULT_OPTIONS['cuda']})",
    )
    parser.add_argument(
        "--attn-sizes",
        nargs="*",
        type=int,
        default=None,
        help="feature-map sizes for the AttentionBlock micro-benchmark (default cpu 8 16 32, "
        "cuda 8 16 32 64); give the flag alone to skip it",
    )
    parser.add_argument("--attn-steps", type=int, default=7, help="timed calls per size")
    parser.add_argument(
        "--attn-batch", type=int, default=None, help="AttentionBlock batch (cpu 4, cuda 32)"
    )
    parser.add_argument("--skip-train", action="store_true", help="only the attention part")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--note", default="", help="free text added to the report header")
    parser.add_argument("--markdown", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    for name in ("steps", "block", "attn_steps", "batch_size", "attn_batch"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> str:
    """Run the benchmark; print the Markdown report (and write it with `--markdown`)."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type not in ("cpu", "cuda"):
        raise SystemExit(f"--device {args.device}: only cpu and cuda are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    kind = device.type
    steps = args.steps or DEFAULT_STEPS[kind]
    warmup = DEFAULT_WARMUP[kind] if args.warmup is None else args.warmup
    block = args.block or DEFAULT_BLOCK[kind]
    option_sets = args.options or [parse_option_set(o) for o in DEFAULT_OPTIONS[kind]]
    attn_sizes = DEFAULT_ATTN_SIZES[kind] if args.attn_sizes is None else args.attn_sizes
    attn_batch = args.attn_batch or ATTN_BATCH[kind]
    settings = {
        "steps": steps,
        "warmup": warmup,
        "block": block,
        "attention steps": args.attn_steps,
    }
    load_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    began = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - began:6.0f} s] {message}", flush=True)

    dtypes = ["fp32"]
    if kind == "cuda" or any("bf16" in o for o in option_sets):
        dtypes.append("bf16")
    torch_dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    matmul: dict[str, float] = {}
    matmul_sizes: dict[str, int] = {}
    for d in dtypes:
        matmul[d], matmul_sizes[d] = matmul_flops_per_s(device, torch_dtypes[d], MATMUL_SIZE[kind])
        log(f"matmul reference {d} {matmul_sizes[d]}: {matmul[d] / 1e9:,.1f} GFLOP/s")

    train: list[TrainResult] = []
    if not args.skip_train:
        for name in args.configs:
            spec = CONFIGS[name]
            batch = args.batch_size or spec["batch_size"][kind]
            flops_per_image = count_training_flops(spec["model"], spec["image_size"])
            for options in option_sets:
                results = time_training(
                    name, spec, options, device, batch, steps, warmup, block, flops_per_image
                )
                train += results
                for r in results:
                    what = f"{name} [{r.options}] {r.backend} batch {batch}:"
                    if r.error or r.step_s is None:
                        log(f"{what} failed: {r.error}")
                    else:
                        log(
                            f"{what} {r.step_s * 1e3:,.1f} ms/step, {r.images_per_s:,.1f} img/s, "
                            f"peak {_fmt(r.peak_mib, ',.0f')} MiB"
                        )

    attn: list[AttnResult] = []
    for dtype in ["fp32", "bf16"] if kind == "cuda" else ["fp32"]:
        for size in attn_sizes:
            result = time_attention(size, dtype, device, attn_batch, args.attn_steps, warmup=2)
            attn.append(result)
            times = ", ".join(f"{b} {_fmt(result.ms.get(b), ',.2f')} ms" for b in BACKENDS)
            log(f"AttentionBlock {size}x{size} {dtype}: {result.error or times}")

    load_end = os.getloadavg() if hasattr(os, "getloadavg") else None
    load = (load_start, load_end) if load_start and load_end else None
    text = report(
        args, device, settings, matmul, matmul_sizes, train, attn, load, time.perf_counter() - began
    )
    print()
    print(text)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
        print(f"written to {args.markdown}")
    return text


if __name__ == "__main__":
    main()
