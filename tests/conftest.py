"""Shared fixtures: tiny synthetic volumes, and the real ../shared data when present."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from dagan_tf import recipes
from dagan_tf.data.prepare import PrepareConfig, prepare
from dagan_tf.training.run import train

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# DAGAN_TF_TESTS_WITHOUT_SHARED=1 runs the suite as a user's clone does, without ../shared (CI runs it both ways).
SHARED = (Path(__file__).resolve().parents[1].parent / "shared"
          if os.environ.get("DAGAN_TF_TESTS_WITHOUT_SHARED", "") in ("", "0") else Path("/nonexistent/shared"))
SHARED_DATA = SHARED / "data"


def shared_path(*parts: str) -> Path:
    """A path under ../shared/data, skipping the test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


def saved_model_cli() -> str:
    """TensorFlow's ``saved_model_cli`` (on PATH or beside this Python); skips the test where it is missing."""
    cli = shutil.which("saved_model_cli") or shutil.which("saved_model_cli", path=str(Path(sys.executable).parent))
    if cli is None:
        pytest.skip("saved_model_cli is neither on PATH nor beside this Python")
    return cli


def saved_model_cli_run(export: Path, signature: str, inputs: dict[str, np.ndarray], tmp_path: Path) -> dict:
    """The outputs of ``saved_model_cli run`` (TF's session-based loader, as TF Serving loads a SavedModel) of
    ``signature`` on ``inputs``."""
    cli = saved_model_cli()
    call = Path(tempfile.mkdtemp(dir=tmp_path))
    args, out = [], call / "outputs"
    for name, value in inputs.items():
        np.save(call / f"{name}.npy", np.asarray(value, np.float32))
        args.append(f"{name}={call / f'{name}.npy'}")
    result = subprocess.run([cli, "run", "--dir", str(export), "--tag_set", "serve", "--signature_def", signature,
                             "--inputs", ";".join(args), "--outdir", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return {p.stem: np.load(p) for p in out.glob("*.npy")}


def phantom_volume(size=32, depth=12, seed=0) -> np.ndarray:
    """An ellipsoid head-like phantom ``[size, size, depth]`` with texture, values 0..~1000."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), np.linspace(-1, 1, depth),
                          indexing="ij")
    head = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 1.3) ** 2 < 1
    inner = (x / 0.5) ** 2 + ((y - 0.1) / 0.6) ** 2 < 1
    vol = head * 600.0 + inner * 300.0 + head * rng.normal(0, 30, head.shape)
    return np.clip(vol, 0, None).astype(np.float32)


def write_nifti(path: Path, data: np.ndarray, affine=None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


@pytest.fixture
def phantom_dir(tmp_path) -> Path:
    """A folder of 5 phantom subjects as NIfTI."""
    folder = tmp_path / "vols"
    folder.mkdir()
    for i in range(5):
        write_nifti(folder / f"sub{i}.nii.gz", phantom_volume(seed=i))
    return folder


@pytest.fixture
def prepared_dir(tmp_path, phantom_dir) -> Path:
    out = tmp_path / "prepared"
    prepare([str(phantom_dir)], out, PrepareConfig(size=32, split=(0.6, 0.2, 0.2), min_foreground=0.05))
    return out


SIZE = 32


def run(*args):
    """Invoke the CLI in-process (exit code, interleaved stdout and stderr in ``output``)."""
    from click.testing import CliRunner

    from dagan_tf.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def assert_user_error(result, *needles, output=None):
    """One ``Error:`` line containing ``needles``, non-zero exit, no traceback, ``output`` not created."""
    assert result.exit_code != 0, result.output
    text = result.output.strip()
    error_lines = [line for line in text.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and text.splitlines()[-1] == error_lines[0], text
    assert "Traceback" not in text and result.exc_info[0] is SystemExit
    for needle in needles:
        assert needle in error_lines[0], error_lines[0]
    if output is not None:
        assert not output.exists()


def assert_resume_is_exact(config, data, folder: Path, epochs: int = 2):
    """Train ``config`` for ``epochs`` in one go and, in another run, 1 epoch then ``--resume`` to ``epochs``;
    the generators must be bit-identical.  Returns ``(uninterrupted run folder, its generator)``."""
    from dagan_tf.training.trained import load_run_network

    whole, part = folder / "whole", folder / "part"
    train(whole, config, data, epochs=epochs)
    train(part, config, data, epochs=1)
    train(part, resume=True, epochs=epochs)
    a, _ = load_run_network(whole)
    b, _ = load_run_network(part)
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    return whole, a


def tiny_config(recipe="ppgr", *extra):
    """A 32² PPGR-family recipe small enough for unit tests (random VGG, deterministic)."""
    overrides = [f"model.image_size={SIZE}", "model.width=0.0625", "vgg.weights=random", "vgg.input_size=32",
                 "data.mask=gaussian1d", "data.ratio=0.3", "data.augment=false", "train.batch_size=4",
                 "train.val_batch_size=8", "train.steps_per_epoch=3", "train.epochs=2", "train.patience=0",
                 "train.lr=0.0005", "train.deterministic=true"]
    return recipes.apply_overrides(recipes.load_recipe(recipe), overrides + list(extra))


@pytest.fixture(scope="session")
def real_slices(tmp_path_factory):
    """A prepared folder of real IXI slices at 32² (synthetic phantoms when ../shared is absent)."""
    out = tmp_path_factory.mktemp("real") / "prepared"
    ixi = SHARED_DATA / "mri" / "ixi-t1"
    if ixi.exists():
        sources = [str(p) for p in sorted(ixi.glob("*.nii.gz"))[:3]]
    else:
        folder = tmp_path_factory.mktemp("phantoms")
        sources = [str(write_nifti(folder / f"s{i}.nii.gz", phantom_volume(SIZE, 24, seed=i))) for i in range(3)]
    prepare(sources, out, PrepareConfig(size=SIZE, split=(0.34, 0.33, 0.33), min_foreground=0.2))
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, real_slices):
    """A tiny PPGR trained for 2 epochs on :func:`real_slices`."""
    run = tmp_path_factory.mktemp("runs") / "ppgr"
    train(run, tiny_config(), real_slices, verbose=0)
    return run




@pytest.fixture(scope="session")
def multicoil_dir(tmp_path_factory):
    """A prepared 4-coil folder (32², SNR 100) of 5 phantom subjects."""
    folder = tmp_path_factory.mktemp("mc")
    for i in range(5):
        write_nifti(folder / f"s{i}.nii.gz", phantom_volume(32, 8, seed=i))
    out = folder / "prepared"
    prepare([str(folder)], out, PrepareConfig(size=32, split=(0.6, 0.2, 0.2), min_foreground=0.05, coils=4,
                                              noise_snr=100.0))
    return out
