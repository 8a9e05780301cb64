"""Classical baselines on the networks' k-space: projection (zero-filled + DC), TV and ℓ1-wavelet (sigpy)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import assert_user_error, phantom_volume, run
from dagan_tf import kspace as ks
from dagan_tf import metrics
from dagan_tf.baselines import ClassicalBaseline, projection
from dagan_tf.data.batches import KSpaceBatch
from dagan_tf.masks import make_mask


def _batch(images: np.ndarray, mask: np.ndarray) -> KSpaceBatch:
    """An evaluation batch of ``images [B, H, W]`` in [0, 1] with one mask, as the pipeline makes it."""
    target = tf.constant(images[..., None], tf.float32)
    masks = tf.constant(np.broadcast_to(mask, images.shape), tf.float32)
    kspace, zf = ks.undersample(target[..., 0], masks)
    channels = tf.stack([tf.math.real(zf), tf.math.imag(zf)], -1)
    return KSpaceBatch(tf.abs(zf)[..., None], channels, target, tf.concat([target, tf.zeros_like(target)], -1),
                       masks, kspace)


def _phantom_slices(size=64, n=2) -> np.ndarray:
    vol = phantom_volume(size, 8)
    return np.transpose(vol[..., 3:3 + n] / vol.max(), (2, 0, 1)).astype(np.float32)


def test_sigpy_uses_our_fft_convention():
    sp = pytest.importorskip("sigpy", reason="the 'cs' extra (sigpy) is not installed")
    x = np.random.default_rng(0).standard_normal((2, 16, 12)).astype(np.complex64)
    np.testing.assert_allclose(sp.fft(x, axes=(-2, -1), center=True, norm="ortho"), ks.fft2c(x).numpy(),
                               atol=1e-5)


def test_projection_keeps_samples_and_beats_zero_filled_in_the_magnitude_regime():
    images = _phantom_slices()
    batch = _batch(images, make_mask("vds1d", images.shape[1:], 0.25, seed=0))
    zf_psnr = metrics.psnr(batch.target, batch.zero_filled).numpy()
    out = projection(100)(batch)
    assert np.all(metrics.psnr(batch.target, out).numpy() > zf_psnr + 2.0)
    one = projection(1)(batch).numpy()
    axes = (-2, -1)
    x0, m, k0 = batch.zero_filled.numpy()[..., 0], batch.mask.numpy(), batch.kspace.numpy()
    k = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x0, axes=axes), norm="ortho"), axes=axes)
    expected = np.abs(np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift((1 - m) * k + m * k0, axes=axes), norm="ortho"),
                                      axes=axes))
    np.testing.assert_allclose(one[..., 0], expected, atol=1e-4)  # one step by hand in numpy
    full = _batch(images, np.ones(images.shape[1:], np.float32))
    np.testing.assert_allclose(projection(1)(full).numpy(), full.target.numpy(), atol=1e-5)


def test_tv_and_wavelet_exact_on_full_sampling_and_tv_beats_zero_filled_at_r4():
    pytest.importorskip("sigpy", reason="the 'cs' extra (sigpy) is not installed")
    images = _phantom_slices()
    full = _batch(images, np.ones(images.shape[1:], np.float32))
    for method in ("tv", "wavelet"):
        out = ClassicalBaseline(method, 1e-6, 50)(full)
        assert np.all(metrics.nmse(full.target, out).numpy() < 1e-5), method
    batch = _batch(images, make_mask("vds1d", images.shape[1:], 0.25, seed=0))
    zf = metrics.nmse(batch.target, batch.zero_filled).numpy()
    tv = metrics.nmse(batch.target, ClassicalBaseline("tv", 0.01, 100)(batch)).numpy()
    assert np.all(tv < 0.8 * zf), (tv, zf)


def test_classical_reconstruction_is_a_pure_function_of_its_inputs():
    """sigpy's step-size power iteration draws from numpy's global random state: advancing that state between
    two reconstructions of the same slices must not change one bit of TV, l1-wavelet or SENSE (5 iterations,
    far from converged, where the start vector showed), and the caller's random state is left as it was."""
    pytest.importorskip("sigpy", reason="the 'cs' extra (sigpy) is not installed")
    images = _phantom_slices(32, 2)
    batch = _batch(images, make_mask("vds1d", images.shape[1:], 0.25, seed=0))
    for method, lam in (("tv", 1e-3), ("wavelet", 1e-3), ("sense", 1e-2)):
        baseline = ClassicalBaseline(method, lam, 5)
        np.random.seed(1)
        first = baseline(batch).numpy()
        drawn_after_first = np.random.random()
        np.random.seed(1)
        np.random.random(1000)  # the global state advanced, as λ tuning or another baseline would
        second = baseline(batch).numpy()
        np.testing.assert_array_equal(first, second, err_msg=method)
        np.random.seed(1)
        assert np.random.random() == drawn_after_first, "the caller's global random state was changed"


def test_eval_baselines_tuned_lambda_recorded(tmp_path, prepared_dir):
    pytest.importorskip("sigpy", reason="the 'cs' extra (sigpy) is not installed")
    out = tmp_path / "e"
    result = run("eval", "--model", "tv", "--model", "zero-filled-dc", "--tune-lambda", "--cs-iterations", 10,
                 "--data", prepared_dir, "--mask", "vds1d", "--ratio", 0.25, "--out", out)
    assert result.exit_code == 0, result.output
    m = json.loads((out / "metrics.json").read_text())
    assert {"zero_filled", "zero_filled_dc1", "zero_filled_dc100", "tv"} <= set(m)
    tv = m["reconstructor_settings"]["tv"]
    grid = tv["validation_nmse_by_lambda"]
    assert tv["lambda"] == float(min(grid, key=grid.get)) and tv["lambda_source"] == "tuned on validation NMSE"
    assert m["n_slices"] == len(np.load(prepared_dir / "test_images.npy"))


def test_baselines_without_sigpy_name_the_extra(tmp_path, prepared_dir):
    code = ("import sys\nsys.modules['sigpy'] = None\nsys.modules['sigpy.mri'] = None\n"
            "sys.modules['sigpy.mri.app'] = None\nfrom dagan_tf.cli import main\nmain(sys.argv[1:])\n")
    proc = subprocess.run([sys.executable, "-c", code, "eval", "--model", "wavelet", "--data", str(prepared_dir),
                           "--mask", "vds1d", "--ratio", "0.25", "--out", str(tmp_path / "e")],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and not (tmp_path / "e").exists()
    assert proc.stderr.strip().splitlines()[-1] == \
        "Error: the sense, tv and wavelet baselines need sigpy: pip install 'dagan-tf[cs]'"


def test_eval_needs_a_model_or_run(tmp_path, prepared_dir):
    out = tmp_path / "e"
    assert_user_error(run("eval", "--data", prepared_dir, "--mask", "vds1d", "--ratio", 0.25, "--out", out),
                      "--model", "--run", output=out)
    assert_user_error(run("eval", "--model", "zero-filled", "--dc", "--data", prepared_dir, "--mask", "vds1d",
                          "--ratio", 0.25, "--out", out), "zero-filled-dc", output=out)


def test_bart_backend_matches_the_convention_and_beats_zero_filled():
    import shutil

    if shutil.which("bart") is None:
        pytest.skip("the optional BART backend is not installed (Debian package 'bart')")
    from dagan_tf.coils import birdcage_maps, simulate_coil_kspace, slice_rng, smooth_phase

    image = _phantom_slices(64, 1)[0]
    maps = birdcage_maps(4, image.shape)
    k = simulate_coil_kspace(image, maps, slice_rng(0, 0), None, smooth_phase(image.shape, slice_rng(0, 0)))
    full = np.ones(image.shape, np.float32)
    for method in ("sense", "tv", "wavelet"):
        out = ClassicalBaseline(method, 1e-6, 50, backend="bart").reconstruct_slice(k, full, maps)
        assert np.linalg.norm(out - image) / np.linalg.norm(image) < 2e-3, method
    mask = make_mask("vds1d", image.shape, 0.25, seed=0, acs=8)
    zero_filled = np.abs(ks.sense_adjoint(k * mask, maps).numpy())
    tv = ClassicalBaseline("tv", 1e-3, 100, backend="bart").reconstruct_slice(k * mask, mask, maps)
    assert np.linalg.norm(tv - image) < 0.8 * np.linalg.norm(zero_filled - image)
