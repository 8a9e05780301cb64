"""Simulation regimes: magnitude (the papers') against phase-bearing k-space, and honest baselines beside models."""
import json

import numpy as np
import pytest

from conftest import assert_user_error, run, tiny_config
from dagan_tf import metrics
from dagan_tf.baselines import projection
from dagan_tf.data.pipeline import evaluation_dataset, evaluation_masks, training_dataset
from dagan_tf.data.prepare import load_split
from dagan_tf.masks import MaskSpec

SPEC = MaskSpec("vds1d", 0.25, acs=4)


def _batches(prepared, regime, **kwargs):
    split = load_split(prepared, "test")
    return list(evaluation_dataset(split, 4, evaluation_masks(split, SPEC), True, regime=regime, **kwargs))


def _conjugate_symmetry_error(kspace: np.ndarray) -> float:
    """max |k(f) − conj(k(−f))| over the centred grid (even sizes: −f of index i is index (−i) mod N after the roll)."""
    flipped = np.conj(np.roll(kspace[..., ::-1, ::-1], 1, axis=(-2, -1)))
    return float(np.abs(kspace - flipped).max())


def test_phase_is_deterministic_per_slice_and_breaks_conjugate_symmetry(prepared_dir):
    magnitude, phase = _batches(prepared_dir, "magnitude")[0], _batches(prepared_dir, "phase")[0]
    again = _batches(prepared_dir, "phase")[0]
    np.testing.assert_array_equal(phase.kspace.numpy(), again.kspace.numpy())
    other_seed = _batches(prepared_dir, "phase", phase_seed=1)[0]
    assert not np.allclose(phase.kspace.numpy(), other_seed.kspace.numpy())
    full_mag = magnitude.target_complex.numpy()
    assert np.all(full_mag[..., 1] == 0)
    angles = np.angle(phase.target_complex.numpy()[..., 0] + 1j * phase.target_complex.numpy()[..., 1])
    inside = magnitude.target.numpy()[..., 0] > 0.2
    assert not np.allclose(angles[0][inside[0]], angles[1][inside[1]].mean())  # slices differ
    np.testing.assert_allclose(np.abs(phase.target_complex.numpy()[..., 0] + 1j * phase.target_complex.numpy()[..., 1]),
                               magnitude.target.numpy()[..., 0], atol=1e-6)
    from dagan_tf import kspace as ks

    full_k_mag = ks.fft2c(magnitude.target.numpy()[..., 0].astype(np.complex64)).numpy()
    full_k_phase = ks.fft2c(phase.target_complex.numpy()[..., 0] + 1j * phase.target_complex.numpy()[..., 1]).numpy()
    assert _conjugate_symmetry_error(full_k_mag) < 1e-4 < 0.1 < _conjugate_symmetry_error(full_k_phase)


def test_projection_gains_in_the_magnitude_regime_only(prepared_dir):
    gains = {}
    for regime in ("magnitude", "phase"):
        zf, proj = [], []
        for batch in _batches(prepared_dir, regime):
            zf.append(metrics.psnr(batch.target, batch.zero_filled).numpy())
            proj.append(metrics.psnr(batch.target, projection(100)(batch)).numpy())
        gains[regime] = float(np.mean(np.concatenate(proj)) - np.mean(np.concatenate(zf)))
    assert gains["magnitude"] > 2.0 and gains["phase"] < 1.0, gains


def test_training_phases_are_fresh_per_step_and_reproducible(prepared_dir):
    split = load_split(prepared_dir, "train")
    ds, _ = training_dataset(split, 4, SPEC, seed=5, augment=None, with_kspace=True, regime="phase")
    first, second = list(ds.take(2))
    resumed = next(iter(training_dataset(split, 4, SPEC, seed=5, start_step=1, augment=None, with_kspace=True,
                                         regime="phase")[0]))
    np.testing.assert_array_equal(resumed.kspace.numpy(), second.kspace.numpy())
    assert first.zero_filled_complex.shape == (4, 32, 32, 2)
    assert not np.allclose(first.target_complex.numpy()[..., 1], 0)


def test_regime_recorded_and_baseline_warning(tmp_path, trained_run, real_slices):
    pytest.importorskip("sigpy", reason="the 'cs' extra (sigpy) is not installed")
    out = tmp_path / "e"
    result = run("eval", "--run", trained_run, "--data", real_slices, "--model", "tv", "--lam", 0.001,
                 "--cs-iterations", 30, "--regime", "phase", "--out", out)
    assert result.exit_code == 0, result.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["regime"] == "phase (seed 0)"
    if m["tv"]["psnr"]["mean"] > m["model"]["psnr"]["mean"]:
        expected = f"warning: tv reaches {m['tv']['psnr']['mean']:.2f} dB here, above the model row's"
        assert any(w.startswith(expected) for w in m["warnings"]) and expected in result.output
    else:
        assert m["warnings"] == []
    magnitude = run("eval", "--run", trained_run, "--no-baselines", "--data", real_slices, "--out", tmp_path / "m")
    assert magnitude.exit_code == 0, magnitude.output
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["regime"] == "magnitude"


def test_baseline_warning_names_the_strongest_baseline():
    from dagan_tf.evaluate import baseline_warnings

    def row(psnr):
        return {"psnr": {"mean": psnr}}

    result = {"zero_filled": row(30.0), "tv": row(44.05), "wavelet": row(53.0), "model": row(43.1),
              "model+dc": row(46.75), "n_slices": 5}
    assert baseline_warnings(result) == [
        "warning: wavelet reaches 53.00 dB here, above the model row's 43.10 dB",
        "warning: wavelet reaches 53.00 dB here, above the model+dc row's 46.75 dB"]
    assert baseline_warnings({"zero_filled": row(30.0), "model": row(31.0)}) == []


def test_eval_of_a_run_puts_tuned_baselines_beside_it_and_caches_the_weights(tmp_path, trained_run, real_slices):
    pytest.importorskip("sigpy", reason="the 'cs' extra (sigpy) is not installed")
    import shutil

    data = tmp_path / "data"
    shutil.copytree(real_slices, data)
    first = run("eval", "--run", trained_run, "--data", data, "--cs-iterations", 5, "--out", tmp_path / "a")
    assert first.exit_code == 0, first.output
    m = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert {"zero_filled_dc1", "zero_filled_dc100", "tv", "wavelet", "model"} <= set(m)
    assert m["reconstructor_settings"]["tv"]["lambda_source"] == "tuned on validation NMSE"
    assert "tuning the tv weight" in first.output and (data / "baseline_lambdas.json").is_file()
    second = run("eval", "--run", trained_run, "--data", data, "--cs-iterations", 5, "--out", tmp_path / "b")
    assert "tuned before on this data, mask and regime (cached)" in second.output
    again = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert again["reconstructor_settings"]["tv"]["lambda"] == m["reconstructor_settings"]["tv"]["lambda"]
    assert again["tv"]["psnr"]["mean"] == pytest.approx(m["tv"]["psnr"]["mean"], rel=1e-4)
    quick = run("eval", "--run", trained_run, "--no-baselines", "--data", data, "--out", tmp_path / "c")
    assert quick.exit_code == 0 and "tuning" not in quick.output, quick.output
    assert "Classical baselines: skipped" in (tmp_path / "c" / "report.md").read_text()


def test_predict_simulates_the_requested_regime(tmp_path, trained_run):
    import nibabel as nib

    from conftest import SIZE, assert_user_error, phantom_volume, write_nifti

    source = write_nifti(tmp_path / "in.nii.gz", phantom_volume(SIZE, 6))
    volumes = {}
    for regime in ("magnitude", "phase", "phase-again"):
        out = tmp_path / f"{regime}.nii.gz"
        result = run("predict", "--model", trained_run, "--input", source, "--out", out, "--mask", "gaussian1d",
                     "--ratio", "0.3", "--regime", regime.split("-")[0])
        assert result.exit_code == 0, result.output
        volumes[regime] = nib.load(str(out)).get_fdata()
    assert "phase regime" in result.output
    np.testing.assert_array_equal(volumes["phase"], volumes["phase-again"])  # seeded per slice
    assert np.abs(volumes["phase"] - volumes["magnitude"]).max() > 1.0  # a different (complex) simulation
    k = tmp_path / "k.h5"
    import h5py

    with h5py.File(k, "w") as f:
        f["kspace"], f["mask"] = np.zeros((2, SIZE, SIZE), np.complex64), np.ones((SIZE, SIZE), np.float32)
    assert_user_error(run("predict", "--model", trained_run, "--input", k, "--out", tmp_path / "k.nii.gz",
                          "--regime", "phase"), "--regime applies to image input", output=tmp_path / "k.nii.gz")


def test_train_takes_the_regime_and_records_it(tmp_path, real_slices):
    from dagan_tf import recipes

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(recipes.dump(tiny_config("ppgr", "train.epochs=1", "train.steps_per_epoch=1")))
    result = run("train", "--recipe", recipe, "--data", real_slices, "--out", tmp_path / "r", "--regime", "phase")
    assert result.exit_code == 0, result.output
    assert "phase regime" in result.output
    assert recipes.load_config_file(tmp_path / "r" / "config.yaml")["data"]["regime"] == "phase"
    assert_user_error(run("train", "--out", tmp_path / "r", "--resume", "--regime", "magnitude"), "--resume")
