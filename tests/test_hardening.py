"""Bad input, damaged files and operating-system failures through the real CLI: one ``Error:`` line,
a non-zero exit, nothing partial left behind and nothing previous destroyed."""
import hashlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import scipy.io

from conftest import assert_user_error, phantom_volume, run, tiny_config, write_nifti
from dagan_tf import recipes
from dagan_tf.errors import DaganError
from dagan_tf.training.callbacks import read_history


def tree_digest(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file below ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary names left in ``folder``."""
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def cli_process(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "dagan_tf.cli", *map(str, args)], capture_output=True, text=True,
                          **kwargs)


# --- 2. recipes and options are validated before any work ----------------------------------

BAD_VALUES = [
    ("train.batch_size", "0", "an integer >= 1"),
    ("train.batch_size", "-3", "an integer >= 1"),
    ("train.batch_size", "abc", "an integer >= 1"),
    ("train.batch_size", "2.5", "an integer >= 1"),
    ("train.batch_size", "[1, 2]", "got a list"),
    ("train.epochs", "0", "an integer >= 1"),
    ("train.steps_per_epoch", "0", "null or an integer >= 1"),
    ("train.lr", "-1e-4", "a number in (0, 1]"),
    ("train.lr", ".nan", "a number in (0, 1]"),
    ("train.beta1", "1", "a number in [0, 1)"),
    ("train.patience", "-1", "an integer >= 0"),
    ("train.seed", "-1", "an integer >= 0"),
    ("train.precision", "fp8", "one of auto, float32, mixed_bfloat16"),
    ("train.deterministic", "1", "true or false"),
    ("train.max_minutes", "0", "null or a number > 0"),
    ("model.width", "0", "a number in (0, 4]"),
    ("model.image_size", "30", "a multiple of 4"),
    ("model.image_size", "{a: 1}", "got a dict"),
    ("model.max_depth", "9", "an integer in [2, 8]"),
    ("loss.pixel", "-1", "a number >= 0"),
    ("loss.pixel_kind", "l3", "one of ratio, mse"),
    ("vgg.input_size", "8", "an integer in [32, 1024]"),
    ("data.ratio", "1.5", "null or a number in (0, 1]"),
    ("data.acs", "-1", "null or an integer >= 0"),
    ("data.augment", "maybe", "true or false"),
    ("data.mask", "spiral", "unknown mask kind 'spiral'"),
]


@pytest.mark.parametrize("key,value,allowed", BAD_VALUES)
def test_bad_recipe_values_are_one_line_errors_before_any_work(tmp_path, prepared_dir, key, value, allowed):
    out = tmp_path / "run"
    result = run("train", "--recipe", "ppgr", "--data", prepared_dir, "--out", out, "--set", f"{key}={value}")
    assert_user_error(result, key, allowed, output=out)


@pytest.mark.parametrize("text,needles", [
    ("recipe: x\ntrainer: conditional_gan\nmodel: [1, 2\n", ("line", "not valid YAML")),
    ("!!python/object/apply:os.system ['echo hi']\n", ("not valid YAML",)),
    ("- a\n- b\n", ("must be a mapping",)),
    ("recipe: x\ntrainer: nope\n", ("trainer must be one of conditional_gan",)),
])
def test_malformed_recipe_files(tmp_path, prepared_dir, text, needles):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    out = tmp_path / "run"
    assert_user_error(run("train", "--recipe", recipe, "--data", prepared_dir, "--out", out),
                      "bad.yaml", *needles, output=out)


def test_recipe_sections_and_keys_are_checked(tmp_path, prepared_dir):
    base = recipes.load_recipe("pg")
    cases = [({k: v for k, v in base.items() if k != "train"}, "section 'train' is missing"),
             ({**base, "extra": 1}, "unknown key 'extra'"),
             ({**base, "loss": {**base["loss"], "typo": 1}}, "unknown key loss.typo"),
             ({**base, "model": {k: v for k, v in base["model"].items() if k != "width"}},
              "required key model.width is missing"),
             ({**base, "data": {**base["data"], "ratio": None}}, "data.ratio is required for mask kind")]
    for config, needle in cases:
        recipe = tmp_path / "r.yaml"
        recipe.write_text(__import__("yaml").safe_dump(config))
        out = tmp_path / "run"
        assert_user_error(run("train", "--recipe", recipe, "--data", prepared_dir, "--out", out), needle,
                          output=out)


def test_renamed_recipe_keys_still_work_with_a_warning(tmp_path, caplog):
    """model.arch, vgg.arch and loss.vgg (each once meant two things) read as model.generator, vgg.network and
    loss.perceptual, from a file and from --set; giving both names is an error naming them."""
    import yaml

    current = recipes.apply_overrides(recipes.load_recipe("srgan-hybrid"),
                                      ["vgg.network=vgg16", "loss.perceptual=0.25", "model.generator=unet"])
    old = recipes.load_recipe("srgan-hybrid")
    old["model"]["arch"] = old["model"].pop("generator")
    old["vgg"]["arch"] = old["vgg"].pop("network")
    old["loss"]["vgg"] = old["loss"].pop("perceptual")
    file = tmp_path / "old.yaml"
    file.write_text(yaml.safe_dump(old))
    with caplog.at_level("WARNING", logger="dagan_tf.recipes"):
        from_file = recipes.apply_overrides(recipes.load_config_file(file),
                                            ["vgg.arch=vgg16", "loss.vgg=0.25", "model.arch=unet"])
    assert from_file == current
    warned = " ".join(r.getMessage() for r in caplog.records)
    for old_key, new_key in recipes.RENAMED_KEYS.items():
        assert f"{file}: key {old_key} is deprecated; use {new_key}" in warned
        assert f"--set: key {old_key} is deprecated; use {new_key}" in warned
    both = {**old, "loss": {**old["loss"], "perceptual": 1.0}}
    file.write_text(yaml.safe_dump(both))
    with pytest.raises(DaganError, match="give loss.perceptual only"):
        recipes.load_config_file(file)


@pytest.mark.parametrize("args,needle", [
    (("masks", "--kind", "gaussian1d", "--ratio", 0.3, "--size", 32, "--seed", -1), "--seed"),
    (("masks", "--kind", "gaussian1d", "--ratio", 0.001, "--size", 64), "gives no column of 64"),
    (("masks", "--kind", "gaussian1d", "--ratio", 0.1, "--size", 64, "--acs", 20), "--acs 20 needs 20 columns"),
    (("masks", "--kind", "gaussian2d", "--ratio", 0.3, "--size", 32, "--acs", 40), "larger than the 32×32"),
    (("masks", "--kind", "vds1d", "--ratio", 0.3, "--size", 32, "--acs", -2), "--acs"),
])
def test_mask_requests_that_cannot_be_met(tmp_path, args, needle):
    out = tmp_path / "m.npy"
    assert_user_error(run(*args, "--out", out), needle, output=out)


def test_bad_cli_options(tmp_path, prepared_dir):
    out = tmp_path / "e"
    base = ("eval", "--model", "zero-filled", "--data", prepared_dir, "--out", out)
    assert_user_error(run(*base, "--mask", "gaussian1d", "--ratio", 0.3, "--batch-size", 0), "--batch-size",
                      output=out)
    assert_user_error(run(*base, "--mask", "gaussian1d", "--ratio", 0.3, "--acs", 64), "larger than the 32×32",
                      output=out)
    assert_user_error(run(*base, "--mask", "gaussian1d", "--ratio", 0.3, "--split", "dev"), "--split", output=out)
    assert_user_error(run("train", "--out", tmp_path / "r", "--resume", "--epochs", -1), "--epochs")
    assert_user_error(run("prepare", prepared_dir, "--out", out, "--size", 8), "--size", output=out)


def test_argument_errors_come_back_without_importing_tensorflow(tmp_path, prepared_dir):
    code = ("import sys\nfrom dagan_tf.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    print('exit', e.code, 'tensorflow' in sys.modules)\n")
    cases = [["eval", "--model", "zero-filled", "--data", str(prepared_dir), "--out", str(tmp_path / "e")],
             ["train", "--recipe", "ppgr", "--data", str(prepared_dir), "--out", str(tmp_path / "r"),
              "--set", "train.batch_size=0"],
             ["train", "--recipe", "ppgr", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")],
             ["predict", "--model", str(tmp_path), "--input", str(tmp_path / "none.nii.gz"), "--out",
              str(tmp_path / "o.nii.gz")]]
    for args in cases:
        proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
        assert proc.stdout.strip().endswith("False"), (args, proc.stdout, proc.stderr)
        assert proc.stdout.split()[1] != "0" and proc.stderr.strip().startswith("Error:"), proc.stderr


# --- 1. no data loss ---------------------------------------------------------------------------

def test_masks_refuse_to_overwrite_and_write_atomically(tmp_path):
    out = tmp_path / "m.npy"
    assert run("masks", "--kind", "gaussian1d", "--ratio", 0.3, "--size", 32, "--out", out).exit_code == 0
    before = out.read_bytes()
    assert_user_error(run("masks", "--kind", "gaussian1d", "--ratio", 0.5, "--size", 32, "--out", out),
                      "exists", "--overwrite")
    assert out.read_bytes() == before
    ok = run("masks", "--kind", "gaussian1d", "--ratio", 0.5, "--size", 32, "--out", out, "--overwrite")
    assert ok.exit_code == 0 and np.load(out).mean() == 0.5 and not leftovers(tmp_path)


def test_failed_overwrite_keeps_the_old_run(tmp_path, trained_run, real_slices, monkeypatch):
    import tensorflow as tf

    from dagan_tf.training import cgan
    from dagan_tf.training.run import train

    old = tmp_path / "run"
    shutil.copytree(trained_run, old)
    before = tree_digest(old)
    monkeypatch.setattr(cgan, "pixel_loss", lambda target, output, kind: tf.constant(float("nan")))
    with pytest.raises(DaganError, match="NaN/Inf"):
        train(old, tiny_config("pg"), real_slices, overwrite=True, verbose=0)
    assert tree_digest(old) == before and not leftovers(tmp_path)


def test_overwrite_replaces_only_when_done_and_sigterm_keeps_a_resumable_checkpoint(tmp_path, trained_run,
                                                                                   real_slices):
    old = tmp_path / "run"
    shutil.copytree(trained_run, old)
    before = tree_digest(old)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipes.dump(tiny_config("ppgr", "train.epochs=50", "train.steps_per_epoch=2")))
    cmd = [sys.executable, "-m", "dagan_tf.cli", "train", "--recipe", str(recipe), "--data", str(real_slices),
           "--out", str(old), "--overwrite"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    staged = tmp_path / ".run.overwrite"
    deadline = time.time() + 300
    while not (staged / "checkpoints" / "ckpt-1.index").exists() and time.time() < deadline \
            and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("Error: interrupted by SIGTERM") and f"--out {old} --resume" in last, stderr
    assert tree_digest(old) == before, "the old run stays until the new one ends"
    resumed = cli_process("train", "--out", old, "--resume", "--epochs", 3)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming the unfinished --overwrite run" in resumed.stdout and "resuming at epoch" in resumed.stdout
    assert not staged.exists() and (old / "checkpoints" / "ckpt-3.index").exists()
    assert recipes.load_config_file(old / "config.yaml")["train"]["steps_per_epoch"] == 2


def test_a_run_folder_is_trained_by_one_process_at_a_time(tmp_path, trained_run, real_slices):
    """While another process holds a run (it trains, or still stops after a signal), a resume and a new run
    into its path (even after the folder was deleted) are refused; a killed holder's stale lock file is not."""
    from dagan_tf.training.run import train

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    before = tree_digest(run_dir)
    hold = ("import sys, time\nfrom dagan_tf.outputs import exclusive_lock\n"
            "with exclusive_lock(sys.argv[1], 'run folder'):\n    print('held', flush=True)\n    time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = run("train", "--out", run_dir, "--resume", "--epochs", 3)
        assert_user_error(refused, f"run folder {run_dir} is in use", f"pid {holder.pid}")
        assert tree_digest(run_dir) == before
        shutil.rmtree(run_dir)
        with pytest.raises(DaganError, match="in use"):
            train(run_dir, tiny_config("pg"), real_slices, verbose=0)
        assert not run_dir.exists()
    finally:
        holder.kill()
        holder.wait()
    assert leftovers(tmp_path) == [".run.lock"], "SIGKILL leaves the lock file, but not the lock"
    train(run_dir, tiny_config("pg"), real_slices, verbose=0)
    assert (run_dir / "checkpoints" / "ckpt-2.index").exists() and not leftovers(tmp_path)


# --- 3. damaged checkpoints ----------------------------------------------------------------------

def test_resume_falls_back_from_a_damaged_latest_checkpoint(tmp_path, trained_run):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    data = run_dir / "checkpoints" / "ckpt-2.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:100])
    result = run("train", "--out", run_dir, "--resume", "--epochs", 3)
    assert result.exit_code == 0, result.output
    assert "skipped damaged checkpoint" in result.output and "ckpt-2" in result.output
    assert "resuming at epoch 1" in result.output
    assert (run_dir / "checkpoints" / "ckpt-3.index").exists()


def test_resume_may_change_only_the_time_budgets(tmp_path, trained_run):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    before = {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()}
    refused = run("train", "--out", run_dir, "--resume", "--epochs", 3, "--set", "model.width=0.5")
    assert_user_error(refused, "train.max_cpu_minutes")
    # the run spent more than 1e-6 CPU-minutes: a resume under that budget does nothing and keeps the run
    spent = run("train", "--out", run_dir, "--resume", "--epochs", 3, "--set", "train.max_cpu_minutes=1.0e-6")
    assert spent.exit_code == 0, spent.output
    assert "already spent" in spent.output and "nothing to do" in spent.output
    assert {p.name: p.read_bytes() for p in (run_dir / "checkpoints").iterdir()} == before
    assert recipes.load_config_file(run_dir / "config.yaml")["train"]["max_cpu_minutes"] == 1.0e-6


def test_a_budget_cut_after_a_resume_counts_the_steps_of_the_whole_run(tmp_path, trained_run):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    spent = float(read_history(run_dir / "history.csv")[-1]["cpu_minutes"])
    # a budget 1e-9 CPU-minutes above what the run spent ends the resumed run after its first batch
    budget = f"train.max_cpu_minutes={spent + 1e-9!r}"
    result = run("train", "--out", run_dir, "--resume", "--epochs", 5, "--set", budget)
    assert result.exit_code == 0, result.output
    assert "resuming at epoch 2, step 6" in result.output
    assert "training cut short after 7 steps of the run (epoch 3; 1 since the resume)" in result.output, result.output


def test_resume_with_no_intact_checkpoint_after_a_kill_during_the_first_write(tmp_path, trained_run):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    checkpoints = run_dir / "checkpoints"
    shutil.rmtree(checkpoints)
    (checkpoints / "ckpt-1_temp").mkdir(parents=True)  # what a kill during TF's first write leaves
    (checkpoints / "ckpt-1_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"\0" * 64)
    (checkpoints / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')  # dangling
    result = run("train", "--out", run_dir, "--resume", "--epochs", 1)
    assert result.exit_code == 0, result.output
    assert "no intact checkpoint" in result.output and "restarting the run from epoch 0" in result.output
    assert not (checkpoints / "ckpt-1_temp").exists() and (checkpoints / "ckpt-1.index").exists()
    history = (run_dir / "history.csv").read_text().strip().splitlines()
    assert len(history) == 2, "a restart begins a fresh history"


def test_resume_without_any_checkpoint_data(tmp_path, trained_run):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    for index in (run_dir / "checkpoints").glob("*.index"):
        index.write_bytes(b"corrupt")
    result = run("train", "--out", run_dir, "--resume", "--epochs", 1)
    assert result.exit_code == 0, result.output
    assert result.output.count("skipped damaged checkpoint") == 2 and "restarting" in result.output


# --- 3. damaged and foreign files -----------------------------------------------------------------

def test_export_of_damaged_or_mismatched_runs(tmp_path, trained_run):
    truncated = tmp_path / "truncated"
    shutil.copytree(trained_run, truncated)
    best = truncated / "best.weights.h5"
    best.write_bytes(best.read_bytes()[:1000])
    out = tmp_path / "export"
    assert_user_error(run("export", truncated, "--out", out), "best.weights.h5", "truncated", output=out)
    mismatched = tmp_path / "mismatched"
    shutil.copytree(trained_run, mismatched)
    config = recipes.load_config_file(mismatched / "config.yaml")
    config["model"]["width"] = 0.125
    (mismatched / "config.yaml").write_text(recipes.dump(config))
    assert_user_error(run("export", mismatched, "--out", out), "best.weights.h5", "config.yaml", output=out)
    assert not leftovers(tmp_path)


def test_predict_refuses_corrupt_and_foreign_saved_models(tmp_path, trained_run):
    import tensorflow as tf

    source = write_nifti(tmp_path / "in.nii.gz", phantom_volume(32, 4))
    out = tmp_path / "o.nii.gz"
    foreign = tmp_path / "foreign"
    module = tf.Module()
    module.f = tf.function(lambda x: {"y": x * 2}, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(foreign), signatures={"serving_default": module.f})
    args = ("--input", source, "--out", out, "--mask", "gaussian1d", "--ratio", 0.3)
    assert_user_error(run("predict", "--model", foreign, *args), "not a dagan-tf export", output=out)
    exported = tmp_path / "export"
    assert run("export", trained_run, "--out", exported, "--precision", "float32").exit_code == 0
    (exported / "saved_model.pb").write_bytes(b"\x08garbage")
    assert_user_error(run("predict", "--model", exported, *args), "cannot load the SavedModel", output=out)
    assert not leftovers(tmp_path)


def test_prepared_split_truncated_or_wrong_dtype(tmp_path, prepared_dir):
    out = tmp_path / "e"
    args = ("eval", "--model", "zero-filled", "--data", prepared_dir, "--mask", "gaussian1d", "--ratio", 0.3,
            "--out", out)
    test_images = prepared_dir / "test_images.npy"
    good = test_images.read_bytes()
    test_images.write_bytes(good[:len(good) // 2])
    assert_user_error(run(*args), "test_images.npy", "truncated", output=out)
    np.save(test_images, np.zeros((3, 32, 32), np.float64))
    assert_user_error(run(*args), "test_images.npy", "float64", output=out)
    (prepared_dir / "manifest.json").write_text('{"format": "other"}')
    assert_user_error(run(*args), "manifest.json", output=out)


def _kspace_file(path, kspace, mask=None):
    with h5py.File(path, "w") as f:
        f["kspace"] = kspace
        f["mask"] = np.ones(kspace.shape[-2:], np.float32) if mask is None else mask
    return path


def test_kspace_hdf5_checks(tmp_path, trained_run):
    out = tmp_path / "o.nii.gz"
    k = np.fft.fftshift(np.fft.fft2(phantom_volume(32, 3).transpose(2, 0, 1), norm="ortho"), axes=(-2, -1))
    bad_nan = k.astype(np.complex64)
    bad_nan[1, 3, 4] = np.nan
    structured = np.zeros(k.shape, dtype=[("re", "f4"), ("im", "f4")])
    cases = [(bad_nan, "NaN or Inf k-space"), (k[0], "k-space has shape (32, 32)"),
             (np.array([b"abc"] * 4), "not numbers"), (structured, "fields ['im', 're']")]
    for i, (array, needle) in enumerate(cases):
        source = _kspace_file(tmp_path / f"k{i}.h5", array)
        assert_user_error(run("predict", "--model", trained_run, "--input", source, "--out", out), needle,
                          output=out)
        if array.ndim == 3:  # prepare also takes 2-D k-space (one slice)
            assert_user_error(run("prepare", source, "--out", tmp_path / "p"), source.name,
                              output=tmp_path / "p")
    # real/imag compound k-space (ISMRMRD style) is read as complex
    compound = np.zeros(k.shape, dtype=[("real", "f4"), ("imag", "f4")])
    compound["real"], compound["imag"] = k.real, k.imag
    ok = run("predict", "--model", trained_run, "--input", _kspace_file(tmp_path / "c.h5", compound), "--out", out)
    assert ok.exit_code == 0, ok.output


def test_foreign_image_files(tmp_path):
    out = tmp_path / "p"
    np.save(tmp_path / "vector.npy", np.arange(10.0))
    assert_user_error(run("prepare", tmp_path / "vector.npy", "--out", out), "vector.npy", "1 dimensions", output=out)
    np.save(tmp_path / "text.npy", np.array([["a", "b"], ["c", "d"]]))
    assert_user_error(run("prepare", tmp_path / "text.npy", "--out", out), "text.npy", "not an image", output=out)
    with h5py.File(tmp_path / "v73.mat", "w") as f:
        f["im_ori"] = np.zeros((4, 16, 16), np.float32)
    assert_user_error(run("prepare", tmp_path / "v73.mat", "--key", "nope", "--out", out), "v73.mat", "'nope'",
                      output=out)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), str(tmp_path / "huge.nii"))
    raw = bytearray((tmp_path / "huge.nii").read_bytes())
    raw[40:48] = np.array([3, 30000, 30000, 30000], "<i2").tobytes()  # dim[0..3] of the NIfTI-1 header
    (tmp_path / "huge.nii").write_bytes(bytes(raw))
    assert_user_error(run("prepare", tmp_path / "huge.nii", "--out", out), "huge.nii", "header claims", output=out)
    nib.save(nib.Nifti1Image(np.zeros(16, np.float32), np.eye(4)), str(tmp_path / "line.nii.gz"))
    assert_user_error(run("prepare", tmp_path / "line.nii.gz", "--out", out), "line.nii.gz", "shape (16,)",
                      output=out)


def test_mask_file_ratio_is_measured_not_assumed(tmp_path, prepared_dir):
    import json

    mask = np.zeros((32, 32), np.uint8)
    mask[:, 12:20] = 1  # 25 %
    scipy.io.savemat(tmp_path / "m.mat", {"maskRS1": mask})
    out = tmp_path / "e"
    args = ("eval", "--model", "zero-filled", "--data", prepared_dir, "--mask", tmp_path / "m.mat", "--out", out)
    assert_user_error(run(*args, "--ratio", 0.1), "samples 0.2500, not the ratio 0.1", output=out)
    assert run(*args).exit_code == 0
    recorded = json.loads((out / "metrics.json").read_text())["mask"]
    assert recorded["ratio"] == recorded["sampled_fraction"] == 0.25


# --- 4. operating-system errors -------------------------------------------------------------------

@pytest.fixture
def small_mount(tmp_path):
    """A 64 KiB tmpfs (or a read-only one with ``request.param``), skipped where mounting is not allowed."""
    mounts = []

    def mount(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounts)}"
        point.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}); needs root")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", str(point)], capture_output=True)


def test_full_disk_is_one_line_and_leaves_nothing(small_mount, phantom_dir):
    full = small_mount("size=64k")
    result = run("masks", "--kind", "gaussian2d", "--ratio", 0.3, "--size", 256, "--out", full / "m.npy")
    assert_user_error(result, "no space left on device", str(full / "m.npy"), output=full / "m.npy")
    assert list(full.iterdir()) == []
    result = run("prepare", phantom_dir, "--out", full / "prepared", "--size", 64)
    assert_user_error(result, "no space left on device", str(full / "prepared"), output=full / "prepared")
    assert list(full.iterdir()) == []


def test_read_only_output_location(small_mount, prepared_dir):
    read_only = small_mount("ro,size=64k")
    for args in (("masks", "--kind", "gaussian1d", "--ratio", 0.3, "--size", 16, "--out", read_only / "m.npy"),
                 ("eval", "--model", "zero-filled", "--data", prepared_dir, "--mask", "gaussian1d", "--ratio", 0.3,
                  "--out", read_only / "sub" / "e")):
        assert_user_error(run(*args), "read-only file system", str(read_only))


def test_missing_parent_folders_are_created(tmp_path):
    out = tmp_path / "a" / "b" / "m.npy"
    assert run("masks", "--kind", "gaussian1d", "--ratio", 0.3, "--size", 16, "--out", out).exit_code == 0
    assert out.is_file()


def test_export_trust_note_in_help():
    assert "trust" in run("predict", "--help").output
