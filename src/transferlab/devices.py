"""Where networks run: one device concept (CPU, CUDA, Apple MPS) that every stage resolves the same way.

``auto`` picks CUDA, then MPS, then the CPU. Asking for a device this machine lacks is a one-line error naming what
it has. Each device has one reduced precision worth trying (bf16 on CPUs with oneDNN and on GPUs that support it,
else fp16); whether a run uses it is decided by measuring it against fp32 (``features.extract.choose_precision``),
never assumed.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
import re
from contextlib import AbstractContextManager
from typing import Any

import torch

from transferlab.errors import TransferlabError

log = logging.getLogger(__name__)

CPU = torch.device("cpu")
AUTO = "auto"
DEVICE_HELP = "where networks run: auto (CUDA, then Apple MPS, then CPU; default), cpu, cuda, cuda:N or mps"
_SYNTAX = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
FP32 = "fp32"


def check_device_name(name: str) -> str:
    """``name`` normalised (lower case, trimmed) if it is a device spelling; a one-line error otherwise."""
    normalised = str(name).strip().lower()
    if not _SYNTAX.match(normalised):
        raise TransferlabError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    return normalised


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def available_devices() -> list[str]:
    """The devices this machine has, in ``--device`` spelling."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    return names


def resolve_device(name: str | torch.device | None = AUTO) -> torch.device:
    """The ``torch.device`` for ``name`` (None: ``auto``); a one-line error when this machine lacks it."""
    if isinstance(name, torch.device):
        name = str(name)
    spec = check_device_name(name or AUTO)
    if spec == AUTO:
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else CPU
    if spec == "cpu":
        return CPU
    available = ", ".join(available_devices())
    if spec == "mps":
        if not _mps_available():
            raise TransferlabError(f"--device mps: Apple MPS is not available here (available: {available})")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise TransferlabError(f"--device {spec}: no CUDA GPU is visible here (available: {available})")
    index = int(spec.split(":")[1]) if ":" in spec else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise TransferlabError(f"--device {spec}: there is no GPU {index} (available: {available})")
    return torch.device("cuda", index)


def reduced_precision(device: torch.device) -> str | None:
    """The autocast precision worth calibrating on ``device`` ('bf16' or 'fp16'), None where there is none.

    ``TRANSFERLAB_FP32=1`` turns it off everywhere (a user who wants exact float32).
    """
    if os.environ.get("TRANSFERLAB_FP32") == "1":
        return None
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "mps":
        return "fp16"
    return "bf16" if torch.backends.mkldnn.is_available() else None


def training_precision(device: torch.device) -> str:
    """The precision fine-tuning trains in: automatic mixed precision on CUDA (bf16 where the GPU has it, else fp16
    with a gradient scaler); fp32 on the CPU (bf16 autocast training is not measured to pay there, and CPU runs keep
    their results) and on MPS (its autocast does not cover training yet)."""
    if device.type != "cuda" or os.environ.get("TRANSFERLAB_FP32") == "1":
        return FP32
    return reduced_precision(device) or FP32


def autocast(device: torch.device, precision: str) -> AbstractContextManager[Any]:
    """Autocast to ``precision`` ('bf16' / 'fp16') on ``device``; a no-op context for 'fp32'."""
    if precision not in DTYPES:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=DTYPES[precision])


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is the device (or host allocator) running out of memory."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "out of memory" in str(error).lower()
    )


def release_memory(device: torch.device) -> None:
    """Give cached blocks back after an out-of-memory error, so a smaller retry can fit."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def trim_host_memory() -> None:
    """Hand the host heap's free pages back to the system (glibc ``malloc_trim``; a no-op elsewhere).

    A forward pass frees its activations, but glibc keeps the freed pages: after extracting 1,000 images at 224 px
    the process stayed ~330 MB above where it started, and the probe that follows then peaked on top of that.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    if platform.system() != "Linux":
        return None
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc only (musl has no malloc_trim)
    except (OSError, AttributeError):
        return None


def default_batch_size(device: torch.device) -> int:
    """Images per extraction batch when the user gives none: 32 on the CPU (larger batches do not run faster
    there), 128 on an accelerator (fills it better; out-of-memory halves it, see ``features.extract``)."""
    return 32 if device.type == "cpu" else 128


CPU_FORWARD_PIXELS = 8 * 224 * 224
"""Input pixels per CPU forward pass by default (8 images at 224 px); ``$TRANSFERLAB_FORWARD_PIXELS`` overrides it
(0: the whole batch)."""


def forward_batch_size(device: torch.device, image_size: int | None) -> int | None:
    """Images per forward pass within a default batch: on the CPU as many as hold :data:`CPU_FORWARD_PIXELS` input
    pixels at ``image_size`` (px), at least 2; None (the whole batch) on an accelerator or for an unknown size.

    A pass's activations are most of a run's peak memory: at 224 px passes of 8 peaked ~500 MB below passes of 32
    and, alternated in one process on 2 quiet cores, extracted 29% faster (but ~30% slower while other jobs
    overloaded the cores); docs/benchmarks.md, "Scale ... (issue 14)". The features do not depend on it
    (tests/test_features.py)."""
    value = os.environ.get("TRANSFERLAB_FORWARD_PIXELS", "")
    pixels = int(value) if value.isdigit() else CPU_FORWARD_PIXELS
    if device.type != "cpu" or not pixels or not image_size:
        return None
    return max(2, pixels // (image_size * image_size))


def decode_workers(device: torch.device) -> int:
    """Image-decoding processes: on the CPU the network needs the cores (cores - 1, at most 2); with an accelerator
    decoding is the bottleneck, so every core but one decodes (at most 8)."""
    cores = os.cpu_count() or 1
    return min(2 if device.type == "cpu" else 8, max(0, cores - 1))


def loader_options(device: torch.device) -> dict[str, Any]:
    """DataLoader options for batches bound for ``device``: pinned host memory for asynchronous CUDA copies."""
    return {"pin_memory": device.type == "cuda"}


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on accelerators (their convolution kernels prefer it); the CPU keeps the layout it trains in
    today."""
    return torch.contiguous_format if device.type == "cpu" else torch.channels_last


def describe(device: torch.device) -> dict[str, Any]:
    """The device's facts for the run record: type, name, memory (GB) and, for the CPU, the core count."""
    facts: dict[str, Any] = {"device": str(device), "type": device.type}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        facts |= {"name": properties.name, "memory_gb": round(properties.total_memory / 2**30, 1)}
        facts["capability"] = f"{properties.major}.{properties.minor}"
    elif device.type == "mps":
        facts |= {"name": "Apple MPS", "memory_gb": None}
    else:
        facts |= {"name": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    return facts
