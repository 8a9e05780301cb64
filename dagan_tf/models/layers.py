"""Keras layers shared by the models: Keras' own layers, computed faster.

Each is a subclass with the parent's variables, maths and checkpoints:

* ``FusedBatchNorm``: ``BatchNormalization`` by TensorFlow's fused kernel
  (``FusedBatchNormV3``), one pass for statistics and normalisation and a fused
  gradient; 3–4× faster on CPU than Keras' unfused ops.
* ``GemmConv2D`` / ``GemmConv2DTranspose``: 'same'-padded (transposed)
  convolutions that run as one matrix product (im2col / col2im) on small
  feature maps, where oneDNN's convolution kernels are slow (batch 8, forward
  + both gradients, float32 / bf16: DAGAN's 1024→2048 conv on 8×8 maps
  353 → 204 / 319 → 83 ms, its 1536→1024 transposed conv on 4×4 maps
  269 → 115 / 229 → 65 ms).  Which maps count as small is
  :func:`dagan_tf.hardware.use_gemm`, per instruction-set class of the CPU
  (``scripts/bench_kernels.py`` measures both kernels per layer).  A stride-1
  ``GemmConv2D`` to one channel runs as a matmul to per-tap products, summed
  as shifted planes, on maps of any size (:func:`conv2d_by_taps`,
  :func:`dagan_tf.hardware.use_tap_gemm`).  Otherwise they are the Keras
  layers.  An export keeps the choice of the machine that exported it.
* ``LeakyReLU``: gradient from the output, which keeps TF's graph optimiser
  working on conv + bias + leaky ReLU training graphs.

:func:`inference_network` makes the inference copy of a trained network that
``eval``, ``compare``, ``predict`` and ``export`` run: batch norms folded into
the convolutions (``FoldedBatchNorm`` marks where one was), the GEMM path's
transposed-convolution kernels stored in matmul layout (``MatmulConv2DTranspose``)
and the one-channel output convolutions (DAGAN's, SRGAN's, the refinement's)
on the per-tap path.  The networks themselves keep Keras' ``Conv2D`` there:
Keras names a layer's weights in a ``.weights.h5`` file by its class, so
changing the class would orphan every trained run's weights.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from dagan_tf.hardware import inference_matmul_layout, split_batch_of_one, use_gemm, use_tap_gemm


@keras.saving.register_keras_serializable(package="dagan_tf")
class FusedBatchNorm(layers.BatchNormalization):
    """Batch norm over the channels of ``[N, H, W, C]`` inputs (any float dtype; statistics in float32).

    Training mode normalises with the biased batch variance and moves
    ``moving_* = momentum·moving_* + (1 − momentum)·batch_*`` with the biased
    variance, exactly as ``keras.layers.BatchNormalization``.  Under a distribution
    strategy each replica normalises its slice of the batch with the slice's statistics
    (Keras' default) and the moving averages move by the replicas' mean statistics, so
    every replica keeps the same ones (Keras 3's own layer lets them drift apart).  With
    ``synchronized`` (statistics of the global batch) training mode is Keras' own unfused
    code, which all-reduces them.
    """

    def build(self, input_shape):
        if len(input_shape) != 4 or self.axis not in (-1, 3) or self.renorm or not (self.center and self.scale):
            raise ValueError("FusedBatchNorm takes [N, H, W, C] inputs normalised over C, with centre and scale")
        super().build(input_shape)

    def call(self, inputs, training=None, mask=None):
        if mask is not None:
            raise ValueError("FusedBatchNorm does not support masks")
        if self.synchronized and training and self.trainable:
            return super().call(inputs, training=training)
        common = dict(x=inputs, scale=self.gamma.value, offset=self.beta.value, epsilon=self.epsilon,
                      data_format="NHWC")
        if not (training and self.trainable):
            outputs = tf.raw_ops.FusedBatchNormV3(mean=self.moving_mean.value, variance=self.moving_variance.value,
                                                  is_training=False, **common)[0]
            return tf.cast(outputs, self.compute_dtype)
        outputs, mean, unbiased_variance = tf.raw_ops.FusedBatchNormV3(
            mean=tf.zeros([0]), variance=tf.zeros([0]), exponential_avg_factor=1.0, is_training=True, **common)[:3]
        count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
        variance = unbiased_variance * (count - 1.0) / count
        replicas = tf.distribute.get_replica_context()
        if replicas is not None and replicas.num_replicas_in_sync > 1:  # one moving average for every replica
            mean, variance = replicas.all_reduce(tf.distribute.ReduceOp.MEAN, [mean, variance])
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return tf.cast(outputs, self.compute_dtype)


def small_side(height: int, width: int, strides=(1, 1)) -> int:
    """Positions per image of a ``height × width`` map divided by ``strides`` (a conv's output map)."""
    return -(-height // strides[0]) * -(-width // strides[1])


def _small_map(height, width, strides=(1, 1)) -> bool:
    """Whether a map of static size ``height × width``, divided by ``strides``, is small enough for the GEMM
    path on this machine (:func:`dagan_tf.hardware.use_gemm`); maps of dynamic size use oneDNN."""
    if height is None or width is None:
        return False
    return use_gemm(small_side(height, width, strides))


def _plain_config(layer) -> bool:
    """Whether a (transposed) convolution layer is channels_last, without dilation or groups."""
    return (layer.data_format == "channels_last" and all(d == 1 for d in layer.dilation_rate)
            and getattr(layer, "groups", 1) == 1)


def _check_gemm_config(layer) -> None:
    if layer.padding != "same" or not _plain_config(layer):
        raise ValueError(f"{type(layer).__name__} supports 'same' padding, channels_last, no dilation and no groups only")


def _conv_path(filters: int, kernel_size, strides, height, width) -> str:
    """The kernel a :class:`GemmConv2D` runs on a ``height × width`` input: ``gemm`` (im2col on small maps),
    ``taps`` (per-tap products for few output channels) or ``onednn``."""
    if _small_map(height, width, strides):
        return "gemm"
    return "taps" if use_tap_gemm(filters, kernel_size, strides) else "onednn"


def _bias_and_activation(layer, outputs: tf.Tensor) -> tf.Tensor:
    """``layer``'s bias (if any) and activation applied to its convolution ``outputs``, as Keras' layers do."""
    if layer.use_bias:
        outputs = outputs + tf.cast(layer.bias, outputs.dtype)
    return outputs if layer.activation is None else layer.activation(outputs)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def conv2d_gemm(x: tf.Tensor, kernel: tf.Tensor, strides: tuple[int, int]) -> tf.Tensor:
    """'same' convolution of ``[N, H, W, Cin]`` with a ``[kh, kw, Cin, Cout]`` kernel by im2col + matmul."""
    (kh, kw, cin, cout), (sh, sw) = kernel.shape, strides
    height, width = x.shape[1:3]
    out_h, out_w = -(-height // sh), -(-width // sw)
    th, tw = -(-kh // sh), -(-kw // sw)                      # kernel taps per stride phase
    (top, bottom), (left, right) = _same_padding(height, kh, sh), _same_padding(width, kw, sw)
    # Pad to whole stride cells, split rows/cols into (cell, phase): tap a·s + r reads cell i + a, phase r.
    bottom += sh * (out_h + th - 1) - (top + height + bottom)
    right += sw * (out_w + tw - 1) - (left + width + right)
    cells = tf.reshape(tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]]),
                       [-1, out_h + th - 1, sh, out_w + tw - 1, sw, cin])
    phases = [tf.unstack(row, axis=3) for row in tf.unstack(cells, axis=2)]  # [r][q]: [N, cells_h, cells_w, Cin]
    columns = tf.concat([tf.slice(phases[i % sh][j % sw], [0, i // sh, j // sw, 0], [-1, out_h, out_w, -1])
                         for i in range(kh) for j in range(kw)], axis=-1)      # [N, out_h, out_w, kh·kw·Cin]
    y = tf.matmul(tf.reshape(columns, [-1, kh * kw * cin]), tf.reshape(kernel, [kh * kw * cin, cout]))
    return tf.reshape(y, [-1, out_h, out_w, cout])


def conv2d_by_taps(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """Stride-1 'same' convolution of ``[N, H, W, Cin]`` (any, also dynamic, H and W) with a ``[kh, kw, Cin, Cout]``
    kernel of odd sides, for few output channels: one matmul to the per-tap products, held as planes
    ``[N, kh·kw·Cout, H, W]``, and the sum of the planes shifted by their tap (tap ``(i, j)`` of input pixel
    ``(h, w)`` lands on output pixel ``(h − i + kh//2, w − j + kw//2)``).  Summing contiguous planes is what makes
    this fast: the same sum over ``[N, H, W, kh·kw·Cout]`` columns (:func:`col2im`) reads a few floats per pixel
    (SRGAN's 9×9 64→1 on 256², batch 16: 32 → 12 ms per image).  A 1×1 kernel is one matmul."""
    kh, kw, cin, cout = kernel.shape
    height, width = (x.shape[i] if x.shape[i] is not None else tf.shape(x)[i] for i in (1, 2))
    if kh == kw == 1:
        y = tf.matmul(tf.reshape(x, [-1, cin]), tf.reshape(kernel, [cin, cout]))
        return tf.reshape(y, [-1, height, width, cout])
    taps = tf.reshape(tf.transpose(kernel, [0, 1, 3, 2]), [kh * kw * cout, cin])     # [(i, j, Cout), Cin]
    planes = tf.matmul(taps, tf.reshape(x, [-1, height * width, cin]), transpose_b=True)   # [N, kh·kw·Cout, H·W]
    planes = tf.pad(tf.reshape(planes, [-1, kh * kw, cout, height, width]),
                    [[0, 0], [0, 0], [0, 0], [kh // 2, kh // 2], [kw // 2, kw // 2]])
    y = tf.add_n([planes[:, i * kw + j, :, i:i + height, j:j + width] for i in range(kh) for j in range(kw)])
    return tf.transpose(y, [0, 2, 3, 1])


def conv2d_transpose_gemm(x: tf.Tensor, kernel: tf.Tensor, strides: tuple[int, int]) -> tf.Tensor:
    """'same' transposed convolution of ``[N, H, W, Cin]`` with a ``[kh, kw, Cout, Cin]`` kernel
    (kernel sides multiples of the strides) by matmul + col2im -> ``[N, sh·H, sw·W, Cout]``."""
    kh, kw, cout, cin = kernel.shape
    # (K·xᵀ)ᵀ rather than x·Kᵀ: the same product, but the weight-sized operand is not transposed, which halves
    # the time of the matmul when x has few rows (batch 1, DAGAN's 1536→512 on 4×4: 13.7 → 4.6 ms).
    columns = tf.transpose(tf.matmul(tf.reshape(kernel, [-1, cin]), tf.reshape(x, [-1, cin]), transpose_b=True))
    return col2im(columns, x.shape[1:3], (kh, kw), strides)


def col2im(columns: tf.Tensor, size: tuple[int, int], kernel_size: tuple[int, int],
           strides: tuple[int, int]) -> tf.Tensor:
    """The 'same' transposed convolution ``[N, sh·H, sw·W, Cout]`` from its per-tap products ``columns
    [N·H·W, kh·kw·Cout]`` (input position × (tap row, tap column, output channel)); ``size`` may hold
    scalar tensors (a dynamic map size)."""
    (height, width), (kh, kw), (sh, sw) = size, kernel_size, strides
    th, tw = kh // sh, kw // sw                     # kernel taps per output phase
    cout = columns.shape[-1] // (kh * kw)
    columns = tf.reshape(columns, [-1, height, width, th, sh, tw, sw, cout])   # tap (a·s + r) -> (a, r)
    taps = [tf.unstack(row, axis=4) for row in tf.unstack(columns, axis=3)]  # [a][b]: [N, H, W, sh, sw, Cout]
    # Output row s·(i + a) + r receives input row i through tap a·s + r: sum the shifted taps per phase.
    phases = tf.add_n([tf.pad(taps[a][b], [[0, 0], [a, th - 1 - a], [b, tw - 1 - b], [0, 0], [0, 0], [0, 0]])
                       for a in range(th) for b in range(tw)])                  # [N, H+th-1, W+tw-1, sh, sw, Cout]
    full = tf.reshape(tf.transpose(phases, [0, 1, 3, 2, 4, 5]), [-1, sh * (height + th - 1), sw * (width + tw - 1), cout])
    top, left = (kh - sh) // 2, (kw - sw) // 2
    return full[:, top:top + sh * height, left:left + sw * width, :]


@keras.saving.register_keras_serializable(package="dagan_tf")
class GemmConv2D(layers.Conv2D):
    """``keras.layers.Conv2D`` ('same', channels_last, no dilation) with the GEMM path on small maps and the
    per-tap path for few output channels (module doc)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _check_gemm_config(self)

    def convolution_op(self, inputs, kernel):
        path = _conv_path(self.filters, self.kernel_size, self.strides, *inputs.shape[1:3])
        if path == "gemm":
            return conv2d_gemm(inputs, kernel, self.strides)
        if path == "taps":
            return conv2d_by_taps(inputs, kernel)
        return super().convolution_op(inputs, kernel)


@keras.saving.register_keras_serializable(package="dagan_tf")
class GemmConv2DTranspose(layers.Conv2DTranspose):
    """``keras.layers.Conv2DTranspose`` ('same', channels_last, no dilation or output padding, kernel sides
    multiples of the strides) with the GEMM path on small maps."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _check_gemm_config(self)
        if self.output_padding is not None or any(k % s for k, s in zip(self.kernel_size, self.strides)):
            raise ValueError("GemmConv2DTranspose needs kernel sides that are multiples of the strides "
                             "and no output padding")

    def call(self, inputs):
        if not _small_map(*inputs.shape[1:3]):
            return super().call(inputs)
        outputs = conv2d_transpose_gemm(inputs, tf.cast(self.kernel, inputs.dtype), self.strides)
        return _bias_and_activation(self, outputs)


@keras.saving.register_keras_serializable(package="dagan_tf")
class LeakyReLU(layers.LeakyReLU):
    """``keras.layers.LeakyReLU`` (slope > 0) whose gradient is computed from its output.

    Same values and gradients (the output has the input's sign).  Keras' version
    makes the gradient read the pre-activation, which TF 2.21's graph optimiser
    deletes when it fuses conv + bias + leaky ReLU, so it abandons all its
    fusions with "remapper failed: … LeakyReluGrad … missing node …BiasAdd".
    """

    def __init__(self, negative_slope=0.3, **kwargs):
        if negative_slope <= 0:
            raise ValueError("LeakyReLU needs a positive negative_slope")
        super().__init__(negative_slope=negative_slope, **kwargs)

    def call(self, inputs):
        slope = self.negative_slope

        @tf.custom_gradient
        def leaky_relu(x):
            y = tf.nn.leaky_relu(x, slope)
            return y, lambda dy: tf.raw_ops.LeakyReluGrad(gradients=dy, features=y, alpha=slope)

        return leaky_relu(inputs)


@keras.saving.register_keras_serializable(package="dagan_tf")
class FoldedBatchNorm(layers.Layer):
    """What a batch norm becomes once folded into its convolution: the identity (same call signature)."""

    def call(self, inputs, training=None, mask=None):
        return inputs


@keras.saving.register_keras_serializable(package="dagan_tf")
class MatmulConv2DTranspose(layers.Layer):
    """Inference form of a :class:`GemmConv2DTranspose` on the GEMM path: the same 'same'-padded transposed
    convolution ``[N, H, W, Cin] -> [N, sh·H, sw·W, filters]``, with the kernel stored as the matmul needs it,
    ``[Cin, kh·kw·filters]``, so no call transposes a weight-sized operand (see :func:`inference_network`)."""

    def __init__(self, filters: int, kernel_size, strides, use_bias: bool = True, activation=None, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides = filters, tuple(kernel_size), tuple(strides)
        self.use_bias, self.activation = use_bias, keras.activations.get(activation)

    def build(self, input_shape):
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.kernel = self.add_weight(name="kernel", shape=(input_shape[-1], taps * self.filters))
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros") if self.use_bias else None

    def call(self, inputs):
        columns = tf.matmul(tf.reshape(inputs, [-1, inputs.shape[-1]]), tf.cast(self.kernel, inputs.dtype))
        outputs = col2im(columns, inputs.shape[1:3], self.kernel_size, self.strides)
        return _bias_and_activation(self, outputs)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides, "use_bias": self.use_bias,
                "activation": keras.activations.serialize(self.activation) if self.activation else None}


def conv2d_row_blocks(x: tf.Tensor, kernel: tf.Tensor, strides: tuple[int, int], padding: str,
                      epilogue=None) -> tf.Tensor:
    """``epilogue(tf.nn.conv2d(x, ...))`` of one image ``[1, H, W, Cin]`` (static H, W; an even number of output
    rows) computed as a batch of two row blocks, the top and bottom halves of the output rows with the input rows
    they read; ``epilogue`` (default: none) maps the blocks' outputs ``[2, rows, W', Cout]`` per pixel.

    The blocks are one concatenation of row slices of the image seen as ``[H, W, Cin]`` (slices of the first
    dimension alias the image) and of zero rows for the vertical padding; the convolution pads the width itself.
    Against padding, slicing and stacking (three copies of the image), a RecNet at 256² with oneDNN's AVX2 kernels
    took 41.1 instead of 50.1 ms at batch 1 (medians of 8 alternating rounds, 2-core EPYC with AVX512-BF16).
    """
    (kh, kw, cin, _), (sh, sw) = kernel.shape, strides
    height, width = x.shape[1:3]
    (top, bottom), (left, right) = ((_same_padding(height, kh, sh), _same_padding(width, kw, sw))
                                    if padding == "same" else ((0, 0), (0, 0)))
    out_h = (height + top + bottom - kh) // sh + 1
    half, rows = out_h // 2, (out_h // 2 - 1) * sh + kh
    image = tf.reshape(x, [-1, width, cin])   # [H, W, Cin] (batch one; -1 lets a graph trace it for any batch)
    pieces = []
    for first in (-top, half * sh - top):   # each block's first input row; negative or past the end: zero rows
        start, stop = max(first, 0), min(first + rows, height)
        pieces += [tf.zeros([start - first, width, cin], x.dtype), image[start:stop],
                   tf.zeros([first + rows - stop, width, cin], x.dtype)]
    blocks = tf.reshape(tf.concat(pieces, 0), [2, rows, width, cin])
    y = tf.nn.conv2d(blocks, kernel, strides, [[0, 0], [0, 0], [left, right], [0, 0]])
    y = y if epilogue is None else epilogue(y)
    return tf.reshape(y, [1, out_h, y.shape[2], y.shape[3]])


@keras.saving.register_keras_serializable(package="dagan_tf")
class RowBlockConv2D(layers.Conv2D):
    """Inference form of a ``Conv2D`` on oneDNN's path where a batch of one is slow (see
    :data:`dagan_tf.hardware.SPLIT_BATCH_OF_ONE`): a batch of one image runs as two row blocks
    (:func:`conv2d_row_blocks`), larger batches as ``Conv2D``.  Same weights, same outputs."""

    def call(self, inputs):
        plain = super().call  # convolution, bias and activation inside the branch, where TF fuses them
        return tf.cond(tf.shape(inputs)[0] == 1, lambda: self._row_blocks(inputs), lambda: plain(inputs))

    def _row_blocks(self, inputs):
        # bias and activation on the blocks, before they are joined, where TF fuses them into the convolution
        return conv2d_row_blocks(inputs, tf.cast(self.kernel, inputs.dtype), self.strides, self.padding,
                                 lambda outputs: _bias_and_activation(self, outputs))


def _row_blocks_apply(layer) -> bool:
    """Whether ``layer`` is a ``Conv2D`` that runs on oneDNN's path on a static map with an even number (≥ 4) of
    output rows, so that its inference form may be :class:`RowBlockConv2D`."""
    if type(layer) not in (layers.Conv2D, GemmConv2D) or not _plain_config(layer):
        return False
    height, width = layer.input.shape[1:3]
    if height is None or width is None or _runs_by_taps(layer) or (
            type(layer) is GemmConv2D and _conv_path(layer.filters, layer.kernel_size, layer.strides, height, width)
            != "onednn"):
        return False
    kh, sh = layer.kernel_size[0], layer.strides[0]
    out_h = -(-height // sh) if layer.padding == "same" else (height - kh) // sh + 1
    return out_h >= 4 and out_h % 2 == 0


def _runs_by_taps(layer) -> bool:
    """Whether ``layer`` is a Keras ``Conv2D`` (not ours) that the inference copy puts on the per-tap path."""
    return (type(layer) is layers.Conv2D and (layer.padding == "same" or layer.kernel_size == (1, 1))
            and _plain_config(layer) and use_tap_gemm(layer.filters, layer.kernel_size, layer.strides))


def _inference_dtype(layer: layers.Layer) -> keras.DTypePolicy:
    """``layer``'s dtype policy in an inference copy: a convolution or dense layer computing in a lower precision
    than its float32 variables (``mixed_bfloat16``) holds its weights in its compute dtype, since the copy is
    never trained: the same rounded weights as every call's cast, without the cast (at batch 1 that cast moved
    more memory than the layers' arithmetic).  Every other layer keeps its policy."""
    policy = layer.dtype_policy
    if isinstance(layer, (layers.Conv2D, layers.Conv2DTranspose, layers.Dense)) and (
            policy.compute_dtype != policy.variable_dtype):
        return keras.DTypePolicy(policy.compute_dtype)
    return policy


def inference_network(model: keras.Model, matmul_layout: bool | None = None,
                      row_blocks: bool | None = None) -> keras.Model:
    """The inference copy of a functional ``model`` (``model`` itself when there is nothing to change).

    * Every batch norm whose only input is a ``Conv2D``/``Conv2DTranspose`` (also the GEMM variants) used
      by nothing else becomes an identity, and the convolution gets ``kernel·γ/√(σ²+ε)`` and bias
      ``(b − μ)·γ/√(σ²+ε) + β`` per output channel (the moving statistics, i.e. inference mode).
    * With ``matmul_layout`` (default: :func:`dagan_tf.hardware.inference_matmul_layout` of this machine and
      the layer's compute precision) every :class:`GemmConv2DTranspose` on the GEMM path becomes a
      :class:`MatmulConv2DTranspose` holding its kernel in the matmul layout.
    * Every Keras ``Conv2D`` that :func:`dagan_tf.hardware.use_tap_gemm` sends to the per-tap path (one output
      channel, stride 1, odd kernel, 'same' padding or 1×1) becomes a :class:`GemmConv2D` with the same weights.
    * With ``row_blocks`` (default: :func:`dagan_tf.hardware.split_batch_of_one` of this machine) every other
      convolution on oneDNN's path whose map allows it becomes a :class:`RowBlockConv2D`.
    * Every convolution or dense layer of a mixed-precision ``model`` (``mixed_bfloat16``) holds its weights in its
      compute dtype (:func:`_inference_dtype`): the weights each call would have cast, cast once.

    The copy computes ``model(x, training=False)`` (equal within 1e-5 of its scale) with one pass less over every
    folded feature map.  DAGAN's generator (256², width 1, float32, a 2-core EPYC with AVX512-BF16, medians
    of two runs of ``scripts/bench_speed.py --inference-only``): batch 1 129.5 → 120.6 ms/image, batch 16
    unchanged (101.7 → 102.6), so batch 1 costs 1.18× batch 16 per image instead of 1.27×.  Folding alone
    (the copy where oneDNN is limited to AVX2): batch 1 174–180 → 165–170, batch 16 113–115 → 105–110.
    """
    folds = _foldable_batch_norms(model)
    folded_bns = {bn.name for bn in folds.values()}
    relayout = {layer.name for layer in model.layers
                if isinstance(layer, GemmConv2DTranspose) and _small_map(*layer.input.shape[1:3])
                and (inference_matmul_layout(precision=layer.dtype_policy.compute_dtype) if matmul_layout is None
                     else matmul_layout)}
    by_taps = {layer.name for layer in model.layers if _runs_by_taps(layer)}
    row_blocks = split_batch_of_one() if row_blocks is None else row_blocks
    blocked = {layer.name for layer in model.layers if row_blocks and _row_blocks_apply(layer)}
    retyped = {layer.name for layer in model.layers if _inference_dtype(layer) is not layer.dtype_policy}
    if not folds and not relayout and not by_taps and not blocked and not retyped:
        return model

    def clone(layer):
        if layer.name in folded_bns:
            return FoldedBatchNorm(name=layer.name, dtype=layer.dtype_policy)
        if layer.name in relayout:
            return MatmulConv2DTranspose(layer.filters, layer.kernel_size, layer.strides,
                                         use_bias=layer.use_bias or layer.name in folds, activation=layer.activation,
                                         name=layer.name, dtype=_inference_dtype(layer))
        config = layer.get_config()
        if layer.name in retyped:  # initializers of the new dtype (not every one has bf16 kernels, e.g. Orthogonal's
            # QR); the copy's weights are the network's, set below
            config = {**config, **{key: "zeros" for key in config if key.endswith("_initializer")},
                      "dtype": _inference_dtype(layer)}
        if layer.name in folds:
            config["use_bias"] = True
        if layer.name in by_taps:
            return GemmConv2D.from_config({**config, "padding": "same"})
        if layer.name in blocked:
            return RowBlockConv2D.from_config(config)
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in model.layers:
        if layer.name not in folded_bns:
            target = copy.get_layer(layer.name)
            target.set_weights(_inference_weights(layer, target, folds.get(layer.name), layer.name in relayout))
    return copy


def _foldable_batch_norms(model: keras.Model) -> dict[str, layers.Layer]:
    """Convolution name -> the batch norm that is its only consumer and has it as its only input."""
    folds = {}
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization) and len(layer._inbound_nodes) == 1:
            parents = layer._inbound_nodes[0].parent_nodes
            conv = parents[0].operation if len(parents) == 1 else None
            if isinstance(conv, (layers.Conv2D, layers.Conv2DTranspose)) and len(conv._outbound_nodes) == 1:
                folds[conv.name] = layer
    return folds


def _inference_weights(layer: layers.Layer, target: layers.Layer, batch_norm: layers.Layer | None,
                       matmul_layout: bool) -> list:
    """``layer``'s weights for its inference copy ``target``: ``batch_norm`` folded in, the kernel in the matmul
    layout, a bias where ``target`` has one."""
    if batch_norm is None and not matmul_layout:
        return layer.get_weights()
    kernel = layer.kernel.numpy()
    out_axis = 2 if isinstance(layer, layers.Conv2DTranspose) else 3
    bias = layer.bias.numpy() if layer.use_bias else np.zeros(kernel.shape[out_axis], np.float32)
    if batch_norm is not None:
        scale = batch_norm.gamma.numpy() / np.sqrt(batch_norm.moving_variance.numpy() + batch_norm.epsilon)
        shape = [1, 1, 1, 1]
        shape[out_axis] = -1
        kernel = kernel * scale.reshape(shape)
        bias = (bias - batch_norm.moving_mean.numpy()) * scale + batch_norm.beta.numpy()
    if matmul_layout:  # [kh, kw, Cout, Cin] -> [Cin, kh·kw·Cout]
        kernel = kernel.reshape(-1, kernel.shape[-1]).T
    return [kernel, bias] if target.use_bias else [kernel]


def inference_copy(generator):
    """``generator``'s inference copy: its own ``inference_copy()`` where it defines one (a composite network,
    e.g. the refined network), else :func:`inference_network`."""
    own = getattr(generator, "inference_copy", None)
    return own() if own is not None else inference_network(generator)
