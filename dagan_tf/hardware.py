"""What the machine runs fast: CPU model and flags, and the precision ``auto`` resolves to.

bf16 pays only where the hardware computes it natively: CPUs with AVX512-BF16
or AMX-BF16 (measured ~1.9× faster than float32 training on a Zen 4 EPYC) and
GPUs of compute capability 8.0 (Ampere) or newer; Volta and Turing GPUs get
float16 with dynamic loss scaling.  On AVX2-only CPUs bf16 is
emulated and training was 3–6× *slower* than float32, so ``auto`` picks
float32 there.  Pure Python: the GPU list is passed in by the caller.

Kernels: :func:`use_gemm` says whether a (transposed) convolution of ``models/layers.py`` runs as one
matrix product (im2col / col2im) or as oneDNN's convolution, from the layer's small side and the
instruction-set class of the CPU (:func:`kernel_isa`); the thresholds were measured per class with
``scripts/bench_kernels.py`` (see :data:`GEMM_MAX_POSITIONS`); :func:`use_tap_gemm` says whether a stride-1
convolution with few output channels runs as a matmul to per-tap products and col2im (:data:`TAP_GEMM_MAX_FILTERS`);
:func:`inference_matmul_layout` says whether an inference copy stores the transposed convolutions' kernels in matmul
layout (:data:`INFERENCE_MATMUL_LAYOUT`); :func:`split_batch_of_one` whether it runs single images through oneDNN's
convolutions as two row blocks (:data:`SPLIT_BATCH_OF_ONE`).  Every choice is for this machine's class, or for the one
:func:`target_kernels` names (an export built for the CPU that will serve it).
"""
from __future__ import annotations

import contextlib
import functools
import os
import platform
from pathlib import Path

from dagan_tf.scoped import restoring

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


INFERENCE_PRECISIONS = ("auto", "float32", "bfloat16")


def inference_precision(requested: str, cpu_flags: frozenset[str] | None = None,
                        gpu_compute_capabilities: list[tuple[int, int]] | None = None) -> str:
    """``float32`` or ``bfloat16``: the compute precision of inference for ``requested`` (one of
    :data:`INFERENCE_PRECISIONS`); ``auto`` is ``bfloat16`` where the hardware computes it natively (the rule of
    :func:`resolve_precision`: AMX or AVX512-BF16 CPUs, GPUs from Ampere on) and ``float32`` elsewhere."""
    if requested not in INFERENCE_PRECISIONS:
        raise ValueError(f"unknown inference precision {requested!r}")
    if requested != "auto":
        return requested
    native = resolve_precision("auto", cpu_flags, gpu_compute_capabilities) == "mixed_bfloat16"
    return "bfloat16" if native else "float32"


def machine_inference_precision(requested: str) -> str:
    """:func:`inference_precision` of this machine's CPU and visible GPUs (imports TensorFlow)."""
    return inference_precision(requested, gpu_compute_capabilities=visible_gpu_capabilities())


def keras_policy(precision: str) -> str:
    """The Keras dtype policy that computes in ``precision`` (``float32`` or ``bfloat16``) with float32
    variables: layers declared float32 (data consistency, output activations) stay float32."""
    return {"float32": "float32", "bfloat16": "mixed_bfloat16"}[precision]


@contextlib.contextmanager
def precision_policy(name: str):
    """Build models under the Keras dtype policy ``name``; the previous global policy is restored after."""
    import keras

    with restoring(keras.mixed_precision.global_policy, keras.mixed_precision.set_global_policy):
        keras.mixed_precision.set_global_policy(name)
        yield


def visible_gpu_capabilities() -> list[tuple[int, int]]:
    """Compute capabilities of the GPUs TensorFlow sees (imports TensorFlow)."""
    import tensorflow as tf

    caps = []
    for gpu in tf.config.list_physical_devices("GPU"):
        cc = tf.config.experimental.get_device_details(gpu).get("compute_capability") or (0, 0)
        caps.append(tuple(cc))
    return caps


# Largest small side (positions per image: the output map of a conv, the input map of a transposed
# conv) that runs as one GEMM, per instruction-set class; larger maps use oneDNN.  Measured with
# scripts/bench_kernels.py (TF 2.21, every DAGAN layer at 256², width 1, a 2-core EPYC with
# AVX512-BF16 and the same CPU with oneDNN limited to AVX2): of the thresholds 0, 16, 64, 256, 1024
# and 4096, 64 gave the lowest summed layer time for inference at batch 1 and 16 on both, and for
# training except AVX2 float32 and AVX512 bf16, where 256 was 2.6 % faster but batch-1 inference 8 %
# (AVX2) slower.  64 is within 4 % of a per-layer oracle for training and batch 16 on both classes.
# "baseline" (no AVX2) was not measured and keeps the same value.
#
# On a 2-core Intel Xeon with AMX (amx_bf16, amx_tile), the whole DAGAN inference copy (matmul layout off, medians
# of 4 interleaved rounds, ms per image at batch 1 / 16) for thresholds 0, 16, 64, 256, 1024, 4096: float32
# 209.8/91.4, 147.6/83.0, 112.0/76.6, 103.6/77.9, 101.1/77.6, 111.8/95.0; bf16 92.7/32.8, 61.3/28.9, 42.9/27.4,
# 39.9/27.6, 41.6/31.0, 46.0/40.4 (256 and 64 again in the second run: float32 99.2/71.2, bf16 38.2/26.1 for 256).
# So the amx class takes 256.
GEMM_MAX_POSITIONS = {"amx": 256, "avx512": 64, "avx2": 64, "baseline": 64}

# Kernel classes, the most capable first.
KERNEL_CLASSES = ("amx", "avx512", "avx2", "baseline")


def kernel_isa(cpu_flags: frozenset[str], onednn_limit: str | None = None) -> str:
    """Instruction-set class oneDNN's kernels use: ``amx`` (AVX-512 with AMX tiles), ``avx512``, ``avx2`` or
    ``baseline``.

    ``onednn_limit`` is oneDNN's ``ONEDNN_MAX_CPU_ISA`` (e.g. ``AVX2``; ``native``/``ALL``/None: none):
    a limit below the CPU's own set gives the limit's class (``AVX512_CORE_AMX`` keeps AMX, other
    ``AVX512…`` limits do not).
    """
    own = ("amx" if {"avx512f", "amx_tile"} <= cpu_flags else "avx512" if "avx512f" in cpu_flags
           else "avx2" if "avx2" in cpu_flags else "baseline")
    limit = (onednn_limit or "ALL").upper()
    if limit in ("ALL", "NATIVE", "DEFAULT") or ("AMX" in limit and limit.startswith(("AVX512", "AVX10"))):
        return own
    capped = ("avx512" if limit.startswith(("AVX512", "AVX10")) else "avx2" if limit.startswith("AVX2")
              else "baseline")
    return min(own, capped, key=KERNEL_CLASSES[::-1].index)


@functools.lru_cache(maxsize=1)
def _machine_isa() -> str:
    return kernel_isa(cpu_info()[1], os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA"))


_target_isa: str | None = None  # set by target_kernels


@contextlib.contextmanager
def target_kernels(isa: str | None):
    """Within it, every kernel choice made with the default flags is for instruction-set class ``isa`` (one of
    :data:`KERNEL_CLASSES`; None: this machine's), e.g. to build and trace an export for the CPU that serves it.
    Networks take these choices when they are built and traced, so do both inside."""
    global _target_isa
    if isa is not None and isa not in KERNEL_CLASSES:
        raise ValueError(f"unknown instruction-set class {isa!r}")
    previous, _target_isa = _target_isa, isa
    try:
        yield
    finally:
        _target_isa = previous


def target_isa() -> str:
    """The instruction-set class kernel choices are made for: :func:`target_kernels`' or this machine's."""
    return _target_isa or _machine_isa()


def _isa(cpu_flags: frozenset[str] | None, onednn_limit: str | None) -> str:
    return target_isa() if cpu_flags is None else kernel_isa(cpu_flags, onednn_limit)


def use_gemm(small_side_positions: int | None, cpu_flags: frozenset[str] | None = None,
             onednn_limit: str | None = None) -> bool:
    """Whether a layer whose small side has ``small_side_positions`` positions per image (None: unknown,
    dynamic size) runs as one GEMM; default flags and limit: this machine's."""
    if small_side_positions is None:
        return False
    return small_side_positions <= GEMM_MAX_POSITIONS[_isa(cpu_flags, onednn_limit)]


# Most output channels of a stride-1 'same' convolution with odd kernel sides that an inference copy runs as a matmul
# to per-tap products summed as shifted planes (models/layers.py:conv2d_by_taps) rather than as oneDNN's convolution,
# whose kernels block the output channels by the vector width and so waste 7/8 (AVX2) or 15/16 (AVX-512) of their
# work on one output channel.  Measured with scripts/bench_kernels.py --taps (TF 2.21, float32, a 2-core EPYC with
# AVX512-BF16, and the same CPU with oneDNN limited to AVX2), ms per call, oneDNN -> taps, AVX-512 (AVX2):
#   SRGAN's 9×9 64→1 on 256² slices, batch 1: 55.7 -> 15.2 (192.8 -> 12.5); batch 16: 1147 -> 223 (462 -> 178);
#   the same on 96² patches, batch 16: 113.2 -> 27.8 (77.3 -> 24.6);
#   DAGAN's 1×1 64→1 at 256², batch 16: 31.4 -> 17.5 (20.3 -> 10.7); the refinement's 1×1 32→1: 18.3 -> 7.1 (9.0 -> 5.3).
# Whole inference copies, alternating in one process, ms per image at batch 1 / 16: SRGAN (256²) against the earlier
# form of the path (its products as [N·H·W, kh·kw·Cout] columns, col2im) 842 -> 805 / 865 -> 830 (AVX2 kernels
# 1280 -> 1260 / 1067 -> 1072).  It is an inference form: through its shifted slices the gradient is slower than
# oneDNN's (SRGAN's 9×9 on 96², batch 8, forward and both gradients: 271 against 120 ms), and trained networks keep
# Keras' Conv2D.  Two output channels: faster alone (AVX-512, ms per image at batch 16: RecNet's 3×3 32→2 3.38 ->
# 2.59, DCI-Net's 5×5 40→2 10.2 -> 5.8; with AVX2 kernels slower, 2.29 -> 2.64 and 5.92 -> 6.67), but no faster in the
# whole networks (RecNet 32.8 -> 32.6, the refined network 208 -> 217, DCI-Net at batch 4 1219 -> 1183), so 1.
TAP_GEMM_MAX_FILTERS = {"amx": 1, "avx512": 1, "avx2": 1, "baseline": 1}


def use_tap_gemm(filters: int, kernel_size: tuple[int, int], strides: tuple[int, int],
                 cpu_flags: frozenset[str] | None = None, onednn_limit: str | None = None) -> bool:
    """Whether a 'same' convolution to ``filters`` channels runs as per-tap products + col2im (see
    :data:`TAP_GEMM_MAX_FILTERS`): stride 1, odd kernel sides, few filters; default flags and limit: this machine's."""
    return (tuple(strides) == (1, 1) and all(k % 2 for k in kernel_size)
            and filters <= TAP_GEMM_MAX_FILTERS[_isa(cpu_flags, onednn_limit)])


# Whether the inference copy runs a batch of one image through a oneDNN convolution as two row blocks (a batch of
# two, models/layers.py:RowBlockConv2D), per instruction-set class.  With its AVX2 kernels oneDNN takes its slow
# x64:gemm:jit convolution at batch 1 and brg_conv_fwd:avx2 from batch 2 (ONEDNN_VERBOSE), e.g. a 4×4 128→64
# convolution on 128² maps 88 ms at batch 1 against 24 ms per image at batch 2; with AVX-512 kernels it takes
# brg_conv at batch 1 too.  Measured on a 2-core EPYC with AVX512-BF16 with oneDNN limited to AVX2, inference copies
# at 256², without and with row blocks alternately in one process, ms per image at batch 1 (batch 16): refinement
# U-Net 402 -> 181 (164 -> 164), SRGAN ResNet-16 1264 -> 1057 (935 -> 906), DAGAN 155 -> 142 (107 -> 110).
# With AVX-512 kernels the blocks stay slower, also as one concatenation (conv2d_row_blocks), batch 1, medians of
# 6 alternating rounds: RecNet 36.5 -> 41.7, DAGAN 124.2 -> 128.4 ms.
# On the Xeon with AMX (DAGAN, GEMM threshold 64, ms per image at batch 1 / 16, float32 and bf16): without and with
# row blocks 112.3/75.4 -> 105.8/75.0 and 42.6/26.9 -> 43.7/29.1: no gain where it counts (bf16), so off.
SPLIT_BATCH_OF_ONE = {"amx": False, "avx512": False, "avx2": True, "baseline": False}


def split_batch_of_one(cpu_flags: frozenset[str] | None = None, onednn_limit: str | None = None) -> bool:
    """Whether inference copies run single images through oneDNN convolutions as two row blocks (see
    :data:`SPLIT_BATCH_OF_ONE`); default flags and limit: this machine's."""
    return SPLIT_BATCH_OF_ONE[_isa(cpu_flags, onednn_limit)]


# Whether the inference copy stores the GEMM path's transposed-convolution kernels in matmul layout
# ([Cin, kh·kw·Cout], computed as x·K) rather than the training layout ((K·xᵀ)ᵀ), per instruction-set class.
# Measured with the DAGAN generator (256², width 1, float32, both forms alternately in one process, two runs) on a
# 2-core EPYC with AVX512-BF16: batch 1 130–131 → 124–125 ms/image, batch 16 101–103 → 104–106; with oneDNN
# limited to AVX2 batch 1 165–170 → 195–212 and batch 16 105–110 → 114–116 (oneDNN's AVX2 matmul is slow on
# this shape).  So only the avx512 class uses it; "baseline" was not measured and keeps the training layout.
# On a 2-core Xeon with AMX it is slower at batch 1 (float32 112.3 -> 135.2, bf16 42.6 -> 53.0; batch 16 75.4 ->
# 74.9, 26.9 -> 27.6), so the amx class keeps the training layout.  In bf16 the avx512 class keeps it too: on the
# Zen 4 EPYC (the copy in bf16, both forms alternately in one process, two runs, medians of 5 rounds) the matmul
# layout took batch 1 from 71.9 / 69.6 to 79.0 / 73.3 ms/image, batch 16 53.6 / 52.6 -> 53.7 / 53.9: oneDNN's
# bf16 product x·K of 16–64 rows takes 25 % longer than (K·xᵀ)ᵀ, where in float32 it takes 28 % less time.
# Compute precisions whose copies use the matmul layout, per instruction-set class:
INFERENCE_MATMUL_LAYOUT = {"amx": (), "avx512": ("float32",), "avx2": (), "baseline": ()}


def inference_matmul_layout(cpu_flags: frozenset[str] | None = None, onednn_limit: str | None = None,
                            precision: str = "float32") -> bool:
    """Whether inference copies computing in ``precision`` (``float32`` or ``bfloat16``) keep transposed-convolution
    kernels in matmul layout (see :data:`INFERENCE_MATMUL_LAYOUT`); default flags and limit: this machine's."""
    return precision in INFERENCE_MATMUL_LAYOUT[_isa(cpu_flags, onednn_limit)]
