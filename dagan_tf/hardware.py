"""What the machine runs fast: CPU model and flags, and the precision ``auto`` resolves to.

bf16 pays only where the hardware computes it natively: CPUs with AVX512-BF16
or AMX-BF16 (measured ~1.9× faster than float32 training on a Zen 4 EPYC) and
GPUs of compute capability 8.0 (Ampere) or newer; Volta and Turing GPUs get
float16 with dynamic loss scaling.  On AVX2-only CPUs bf16 is
emulated and training was 3–6× *slower* than float32, so ``auto`` picks
float32 there.  Pure Python: the GPU list is passed in by the caller.
"""
from __future__ import annotations

import platform
from pathlib import Path

NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_info(cpuinfo: str | None = None) -> tuple[str, frozenset[str]]:
    """``(model name, flags)`` of the CPU, from ``/proc/cpuinfo`` (text given for tests)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return platform.processor() or "unknown CPU", frozenset()
    model, flags = "unknown CPU", frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown CPU":
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
    return model, flags


def resolve_precision(requested: str, cpu_flags: frozenset[str] | None = None,
                      gpu_compute_capabilities: list[tuple[int, int]] | None = None) -> str:
    """The Keras dtype policy for ``requested`` (``auto`` decides by the hardware).

    Args:
        requested: ``auto``, ``float32``, ``mixed_bfloat16`` or ``mixed_float16`` (returned unchanged
            unless ``auto``).
        cpu_flags: CPU feature flags (default: this machine's).
        gpu_compute_capabilities: ``(major, minor)`` of each visible GPU; with GPUs the GPUs decide:
            all ≥ 8.0 (Ampere on, native bf16) ``mixed_bfloat16``; all ≥ 7.0 (Volta, Turing: float16
            tensor cores) ``mixed_float16``; else ``float32``.  Without GPUs the CPU flags decide.
    """
    if requested != "auto":
        return requested
    if gpu_compute_capabilities:
        oldest = min(gpu_compute_capabilities)
        return "mixed_bfloat16" if oldest >= (8, 0) else "mixed_float16" if oldest >= (7, 0) else "float32"
    flags = cpu_info()[1] if cpu_flags is None else cpu_flags
    return "mixed_bfloat16" if any(f in flags for f in NATIVE_BF16_CPU_FLAGS) else "float32"


def visible_gpu_capabilities() -> list[tuple[int, int]]:
    """Compute capabilities of the GPUs TensorFlow sees (imports TensorFlow)."""
    import tensorflow as tf

    caps = []
    for gpu in tf.config.list_physical_devices("GPU"):
        cc = tf.config.experimental.get_device_details(gpu).get("compute_capability") or (0, 0)
        caps.append(tuple(cc))
    return caps
