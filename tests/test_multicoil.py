"""Multi-coil data: coil maps, phase, simulation round trip, measured HDF5, ESPIRiT, multi-coil baselines."""
import json

import h5py
import numpy as np
import pytest

from conftest import phantom_volume, run, write_nifti
from dagan_tf import kspace as ks
from dagan_tf.coils import birdcage_maps, simulate_coil_kspace, slice_rng, smooth_phase
from dagan_tf.data.batches import KSpaceBatch
from dagan_tf.data.prepare import PrepareConfig, load_split, prepare
from dagan_tf.data.readers import read_coil_kspace


def _image(size=48):
    vol = phantom_volume(size, 4)
    return (vol[..., 2] / vol.max()).astype(np.float32)


def test_birdcage_maps_are_normalised_and_follow_the_birdcage_model():
    maps = birdcage_maps(8, (40, 48))
    assert maps.shape == (8, 40, 48) and maps.dtype == np.complex64
    np.testing.assert_allclose(np.sum(np.abs(maps) ** 2, axis=0), 1.0, atol=1e-5)
    sigpy = pytest.importorskip("sigpy.mri", reason="the 'cs' extra (sigpy) is not installed")
    reference = sigpy.birdcage_maps((8, 40, 48))
    reference /= np.sqrt(np.sum(np.abs(reference) ** 2, axis=0))
    np.testing.assert_allclose(maps, reference, atol=1e-5)


def test_smooth_phase_is_smooth_seeded_and_differs_between_slices():
    a = smooth_phase((64, 64), slice_rng(0, 2, 5))
    assert np.array_equal(a, smooth_phase((64, 64), slice_rng(0, 2, 5)))
    assert not np.allclose(a, smooth_phase((64, 64), slice_rng(0, 2, 6)))
    assert np.abs(a).max() <= 2 * np.pi and np.ptp(a) > 1.0
    assert np.abs(np.diff(a, axis=0)).max() < 0.5 and np.abs(np.diff(a, axis=1)).max() < 0.5


def test_simulation_round_trip_sense_combine_gives_the_complex_target():
    image, maps = _image(), birdcage_maps(8, (48, 48))
    phase = smooth_phase(image.shape, slice_rng(1, 0))
    k = simulate_coil_kspace(image, maps, slice_rng(1, 0), None, phase)
    combined = ks.sense_adjoint(k, maps).numpy()
    np.testing.assert_allclose(combined, image * np.exp(1j * phase), atol=1e-5)
    # phase-bearing k-space is not conjugate-symmetric; the magnitude image's is
    single = ks.fft2c(image * np.exp(1j * phase)).numpy()
    flipped = np.conj(np.roll(single[::-1, ::-1], 1, axis=(0, 1)))
    assert np.abs(single - flipped).max() > 0.1
    real = ks.fft2c(image.astype(np.complex64)).numpy()
    np.testing.assert_allclose(real, np.conj(np.roll(real[::-1, ::-1], 1, axis=(0, 1))), atol=1e-5)
    noisy = simulate_coil_kspace(image, maps, slice_rng(1, 0), 20.0, phase)
    ratio = np.sqrt(np.mean(np.abs(k) ** 2)) / np.sqrt(np.mean(np.abs(noisy - k) ** 2))
    assert 15 < ratio < 25


def test_sense_forward_adjoint_with_estimated_maps_are_adjoint():
    pytest.importorskip("sigpy", reason="the 'cs' extra (sigpy) is not installed")
    from dagan_tf.coils import espirit_maps

    image, maps = _image(), birdcage_maps(8, (48, 48))
    estimated = espirit_maps(simulate_coil_kspace(image, maps, slice_rng(0, 0)), calib_width=20)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((48, 48)) + 1j * rng.standard_normal((48, 48))).astype(np.complex64)
    y = (rng.standard_normal((8, 48, 48)) + 1j * rng.standard_normal((8, 48, 48))).astype(np.complex64)
    lhs = np.vdot(ks.sense_forward(x, estimated).numpy(), y)
    rhs = np.vdot(x, ks.sense_adjoint(y, estimated).numpy())
    assert abs(lhs - rhs) < 1e-3 * abs(lhs)
    inside = image > 0.05
    combined = np.abs(ks.sense_adjoint(simulate_coil_kspace(image, maps, slice_rng(0, 0)), estimated).numpy())
    assert np.abs(combined - image)[inside].mean() < 0.02 * image[inside].mean()


def test_measured_multicoil_hdf5_keeps_complex_coil_data(tmp_path):
    image, maps = _image(40), birdcage_maps(4, (40, 40))
    kspace = np.stack([simulate_coil_kspace(image, maps, slice_rng(0, s), None,
                                            smooth_phase(image.shape, slice_rng(0, s))) for s in range(3)])
    with h5py.File(tmp_path / "file_brain.h5", "w") as f:
        f["kspace"] = kspace
        f["sens_maps"] = np.broadcast_to(maps, kspace.shape)
    read, read_maps = read_coil_kspace(tmp_path / "file_brain.h5")
    assert read.dtype == np.complex64 and read.shape == (3, 4, 40, 40)
    np.testing.assert_array_equal(read, kspace)
    prepare([str(tmp_path / "file_brain.h5")], tmp_path / "p",
            PrepareConfig(size=32, split=(1.0, 0.0, 0.0), fit="pad-crop", min_foreground=0.0))
    train = load_split(tmp_path / "p", "train")
    assert train.coils == 4 and np.iscomplexobj(train.kspace) and train.maps.shape == (3, 4, 32, 32)
    rss = np.sqrt(np.sum(np.abs(ks.ifft2c(train.kspace).numpy()) ** 2, axis=1))
    np.testing.assert_allclose(rss, train.images, atol=1e-5)
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["multicoil"]["regime"] == "measured"


def test_prepare_coils_writes_consistent_multicoil_splits(multicoil_dir):
    test = load_split(multicoil_dir, "test")
    assert test.kspace.shape == (len(test.images), 4, 32, 32) and test.maps.shape == (1, 4, 32, 32)
    combined = np.abs(ks.sense_adjoint(test.kspace, np.broadcast_to(test.maps, test.kspace.shape)).numpy())
    assert np.abs(combined - test.images).mean() < 0.02  # noise at SNR 100 only
    manifest = json.loads((multicoil_dir / "manifest.json").read_text())
    assert manifest["multicoil"]["coils"] == 4 and manifest["config"]["noise_snr"] == 100.0


def test_multicoil_eval_baselines_with_true_and_estimated_maps(tmp_path, multicoil_dir):
    pytest.importorskip("sigpy", reason="the 'cs' extra (sigpy) is not installed")
    results = {}
    for maps in ("true", "espirit"):
        out = tmp_path / maps
        result = run("eval", "--model", "sense", "--model", "zero-filled-dc", "--data", multicoil_dir,
                     "--mask", "vds1d", "--ratio", 0.25, "--acs", 6, "--maps", maps, "--calib-width", 12,
                     "--cs-iterations", 20, "--out", out)
        assert result.exit_code == 0, result.output
        results[maps] = json.loads((out / "metrics.json").read_text())
        assert results[maps]["coils"] == 4
    assert results["espirit"]["maps"].startswith("ESPIRiT")
    assert (multicoil_dir / "test_maps_espirit12.npy").is_file(), "estimated maps are cached"
    for m in results.values():
        assert m["sense"]["nmse"]["mean"] < m["zero_filled"]["nmse"]["mean"]


def test_multicoil_training_batches_share_the_batch_structure(multicoil_dir):
    from dagan_tf.data.augment import AugmentConfig
    from dagan_tf.data.pipeline import training_dataset
    from dagan_tf.errors import DaganError
    from dagan_tf.masks import MaskSpec

    train = load_split(multicoil_dir, "train")
    spec = MaskSpec("vds1d", 0.25, acs=6)
    ds, steps = training_dataset(train, 4, spec, seed=3, augment=None)
    batch = next(iter(ds))
    assert isinstance(batch, KSpaceBatch) and batch.index is None and batch.maps is not None
    assert batch.kspace.shape == (4, 4, 32, 32) and batch.maps.shape == (4, 4, 32, 32)
    mask = spec.build((32, 32))
    np.testing.assert_array_equal(batch.mask.numpy()[0], mask)
    assert np.all(batch.kspace.numpy()[..., mask == 0] == 0)
    combined = np.abs(ks.sense_adjoint(batch.kspace, batch.maps).numpy())
    np.testing.assert_allclose(batch.zero_filled.numpy()[..., 0], combined, atol=1e-6)
    again = next(iter(training_dataset(train, 4, spec, seed=3, augment=None)[0]))
    np.testing.assert_array_equal(again.target.numpy(), batch.target.numpy())
    estimated = np.broadcast_to(np.conj(train.maps), train.kspace.shape)  # any [N, C, H, W] maps, e.g. ESPIRiT's
    other = next(iter(training_dataset(train, 4, spec, seed=3, augment=None, maps=estimated)[0]))
    np.testing.assert_allclose(other.maps.numpy(), np.conj(batch.maps.numpy()))
    full = batch.target_complex.numpy()  # SENSE combination of the fully sampled coil k-space: noise only
    assert np.abs(np.hypot(full[..., 0], full[..., 1]) - batch.target.numpy()[..., 0]).mean() < 0.02
    with pytest.raises(DaganError, match="flip_rotate"):
        training_dataset(train, 4, spec, augment=AugmentConfig())


def test_multicoil_defaults_eight_coils_and_the_cwgan_mask(tmp_path):
    folder = tmp_path / "vols"
    folder.mkdir()
    for i in range(3):
        write_nifti(folder / f"s{i}.nii.gz", phantom_volume(64, 4, seed=i))
    out = tmp_path / "p"
    assert run("prepare", folder, "--out", out, "--size", 64, "--split", "0.34,0.33,0.33", "--min-foreground",
               0.05, "--coils").exit_code == 0
    assert load_split(out, "test").coils == 8
    result = run("eval", "--model", "zero-filled", "--data", out, "--maps", "true", "--out", tmp_path / "e")
    assert result.exit_code == 0, result.output
    mask = json.loads((tmp_path / "e" / "metrics.json").read_text())["mask"]
    assert mask["kind"] == "vds1d" and mask["ratio"] == 0.25 and mask["sampled_fraction"] == 0.25
