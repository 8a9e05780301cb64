"""The ``dagan-tf`` command line: each command is a few calls into the library."""
from __future__ import annotations

import functools
import logging
import os
import sys

import click

from dagan_tf import __version__
from dagan_tf.errors import DaganError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _user_errors(fn):
    """Turn library errors into a one-line ``Error: …`` and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DaganError as exc:
            raise click.ClickException(str(exc)) from None
        except MemoryError:
            raise click.ClickException("out of memory; use a smaller --batch-size or image size") from None

    return wrapper


def _parse_split(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise DaganError(f"--split must be three comma-separated numbers, got {text!r}") from None
    if len(parts) != 3:
        raise DaganError(f"--split must be three comma-separated numbers, got {text!r}")
    return parts


def mask_options(fn):
    """``--mask KIND|FILE.mat --ratio R --mask-seed S --acs K --per-slice-masks``."""
    options = [
        click.option("--mask", "mask_kind", default=None,
                     help="Mask kind (gaussian1d, gaussian2d, poisson2d, vds1d, equispaced, random1d) "
                          "or a DAGAN .mat mask file; with --run, defaults to the run's own mask."),
        click.option("--ratio", type=float, default=None, help="Sampled fraction in (0, 1]."),
        click.option("--mask-seed", type=int, default=0, show_default=True),
        click.option("--acs", type=int, default=None, help="Fully sampled centre lines / block side."),
        click.option("--per-slice-masks", is_flag=True,
                     help="A different seeded mask for every slice (default: one fixed mask)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _mask_spec(mask_kind, ratio, mask_seed, acs, per_slice_masks):
    from dagan_tf.masks import MaskSpec

    spec = MaskSpec(mask_kind, ratio, mask_seed, acs, per_slice_masks)
    spec.validate()
    return spec


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dagan-tf")
@click.option("-v", "--verbose", is_flag=True, help="Show informational log messages.")
def main(verbose: bool) -> None:
    """GAN-based compressed-sensing MRI reconstruction (DAGAN and relatives)."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)


@main.command("masks")
@click.option("--kind", required=True, help="gaussian1d, gaussian2d, poisson2d, vds1d, equispaced, random1d.")
@click.option("--ratio", type=float, required=True, help="Sampled fraction in (0, 1].")
@click.option("--size", type=int, required=True, help="Mask side N (N×N).")
@click.option("--acs", type=int, default=None, help="Fully sampled centre lines / block side.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", required=True, help="Output .npy file.")
@click.option("--png", default=None, help="Also write the mask as a PNG.")
@_user_errors
def masks_command(kind, ratio, size, acs, seed, out, png):
    """Make a centred undersampling mask and print its sampled fraction."""
    import numpy as np

    from dagan_tf.masks import make_mask, sampled_fraction

    if size < 2:
        raise DaganError(f"--size must be at least 2, got {size}")
    mask = make_mask(kind, (size, size), ratio, seed, acs)
    np.save(out, mask)
    if png:
        from dagan_tf.evaluate import write_png

        write_png(png, (mask * 255).astype(np.uint8))
    click.echo(f"sampled fraction: {sampled_fraction(mask):.4f}")


@main.command("prepare")
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", required=True, help="Output folder (must not exist unless --overwrite).")
@click.option("--size", type=int, default=256, show_default=True)
@click.option("--split", "split_text", default="0.7,0.1,0.2", show_default=True, help="train,val,test fractions.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--min-foreground", type=float, default=0.1, show_default=True)
@click.option("--fit", type=click.Choice(["resize", "pad-crop"]), default="resize", show_default=True)
@click.option("--normalise", type=click.Choice(["minmax", "max"]), default="minmax", show_default=True)
@click.option("--volume-index", type=int, default=None, help="Volume to take from 4-D files.")
@click.option("--key", default=None, help="Array key in .npz/.mat/.h5 files.")
@click.option("--subject-regex", default=None,
              help="Regex on the source path whose first group is the subject id (e.g. 'pat(\\d+)').")
@click.option("--exclude", multiple=True, help="Skip files whose name matches this glob (repeatable).")
@click.option("--slabs", type=int, default=1, show_default=True,
              help="Cut each volume into K slabs counted as subjects (single-volume demos only).")
@click.option("--overwrite", is_flag=True)
@_user_errors
def prepare_command(sources, out, size, split_text, seed, min_foreground, fit, normalise, volume_index, key,
                    subject_regex, exclude, slabs, overwrite):
    """Prepare 2-D slices from MRI volumes (NIfTI, DICOM folders, HDF5, npy/npz, mat, PNG)."""
    from dagan_tf.data.prepare import PrepareConfig, prepare

    config = PrepareConfig(size=size, split=_parse_split(split_text), seed=seed, min_foreground=min_foreground,
                           fit=fit, normalise=normalise, volume_index=volume_index, key=key,
                           subject_regex=subject_regex, exclude=tuple(exclude), slabs=slabs)
    manifest = prepare(list(sources), out, config, overwrite)
    for split, c in manifest["counts"].items():
        click.echo(f"{split:5s}: {c['subjects']:4d} subjects {c['slices']:6d} slices")


@main.command("eval")
@click.option("--model", "model_name", default=None, help="'zero-filled' (the baseline only).")
@click.option("--run", "run_dir", default=None, help="A training run folder to evaluate with the baseline.")
@click.option("--data", required=True, help="Prepared data folder.")
@mask_options
@click.option("--split", default="test", show_default=True)
@click.option("--dc", is_flag=True, help="Apply data consistency to the network output.")
@click.option("--dagan-compat-metrics", is_flag=True, help="The original DAGAN's metric definitions.")
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--out", required=True, help="Output folder.")
@click.option("--overwrite", is_flag=True)
@_user_errors
def eval_command(model_name, run_dir, data, mask_kind, ratio, mask_seed, acs, per_slice_masks, split, dc,
                 dagan_compat_metrics, batch_size, out, overwrite):
    """Evaluate zero-filled (and a trained run) on a whole split; writes metrics.json, CSV, PNG, report."""
    from dagan_tf.evaluate import evaluate, format_table

    if (model_name is None) == (run_dir is None):
        raise DaganError("give exactly one of --model zero-filled or --run RUN")
    if model_name is not None and model_name != "zero-filled":
        raise DaganError(f"unknown --model {model_name!r}; use 'zero-filled' or --run RUN for a trained model")
    model, title = None, "zero-filled evaluation"
    if run_dir is not None:
        from dagan_tf.inference import load_run_reconstructor

        model, run_mask = load_run_reconstructor(run_dir, dc)
        if mask_kind is None:
            mask_kind, ratio, mask_seed, acs, per_slice_masks = run_mask
        title = f"evaluation of {run_dir}" + (" with data consistency" if dc else "")
    elif dc:
        raise DaganError("--dc needs a trained model (--run)")
    elif mask_kind is None:
        raise DaganError("--mask is required for --model zero-filled")
    spec = _mask_spec(mask_kind, ratio, mask_seed, acs, per_slice_masks)
    result = evaluate(data, spec, out, split, model, batch_size, dagan_compat_metrics, overwrite, title)
    click.echo(format_table(result))
    click.echo(f"written to {out}")


@main.command("train")
@click.option("--recipe", default=None, help="Recipe name (pg, ppg, ppgr) or a recipe YAML file.")
@click.option("--data", default=None, help="Prepared data folder.")
@click.option("--out", "run_dir", required=True, help="Run folder.")
@click.option("--mask", "mask_kind", default=None, help="Override data.mask (kind or DAGAN .mat file).")
@click.option("--ratio", type=float, default=None, help="Override data.ratio.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe value.")
@click.option("--epochs", type=int, default=None, help="Override train.epochs.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder.")
@_user_errors
def train_command(recipe, data, run_dir, mask_kind, ratio, overrides, epochs, resume, overwrite):
    """Train a recipe on a prepared data folder (resumable, early stopping on validation NMSE)."""
    from pathlib import Path

    from dagan_tf import recipes
    from dagan_tf.training.run import train

    config = None
    if not resume:
        if recipe is None or data is None:
            raise DaganError("--recipe and --data are required (or --resume an existing run)")
        config = recipes.load_config_file(recipe) if Path(recipe).is_file() else recipes.load_recipe(recipe)
        extra = [f"data.mask={mask_kind}"] * (mask_kind is not None) + [f"data.ratio={ratio}"] * (ratio is not None)
        config = recipes.apply_overrides(config, extra + list(overrides))
    elif recipe or data or overrides or mask_kind or ratio:
        raise DaganError("--resume takes the run's own config.yaml; only --epochs may change")
    train(run_dir, config, data, resume, epochs, overwrite)
    click.echo(f"run saved in {run_dir}")


@main.command("export")
@click.argument("run_dir")
@click.option("--out", required=True, help="SavedModel folder for TF Serving.")
@click.option("--overwrite", is_flag=True)
@_user_errors
def export_command(run_dir, out, overwrite):
    """Export a run's generator as a SavedModel (signatures serving_default and from_kspace)."""
    from dagan_tf.export import export_generator
    from dagan_tf.inference import load_run_generator

    generator, _ = load_run_generator(run_dir)
    export_generator(generator, out, overwrite)
    click.echo(f"exported to {out}")


@main.command("predict")
@click.option("--model", "model_path", required=True, help="Export folder or run folder.")
@click.option("--input", "source", required=True, help="Volume (NIfTI, …) or undersampled k-space HDF5.")
@click.option("--out", required=True, help="Output NIfTI file (.nii.gz).")
@click.option("--mask", "mask_kind", default=None, help="Mask kind or DAGAN .mat file (image input).")
@click.option("--ratio", type=float, default=None)
@click.option("--mask-seed", type=int, default=0, show_default=True)
@click.option("--acs", type=int, default=None)
@click.option("--dc", is_flag=True, help="Apply data consistency to the network output.")
@click.option("--overwrite", is_flag=True)
@_user_errors
def predict_command(model_path, source, out, mask_kind, ratio, mask_seed, acs, dc, overwrite):
    """Reconstruct a volume slice by slice from simulated (or given) undersampled k-space."""
    from pathlib import Path

    from dagan_tf.predict import predict_volume

    if not Path(source).exists():
        raise DaganError(f"path not found: {source}")
    spec = None if mask_kind is None else _mask_spec(mask_kind, ratio, mask_seed, acs, False)
    predict_volume(model_path, source, out, spec, dc, overwrite)
    click.echo(f"written {out}")


@main.command("demo")
@click.option("--out", required=True, help="Output folder for the prepared data, run and reports.")
@click.option("--size", type=int, default=128, show_default=True, help="Image side for the demo.")
@click.option("--minutes", type=float, default=4.0, show_default=True, help="Training budget.")
@click.option("--vgg-weights", default=None,
              help="VGG16 weights ('imagenet' or a .weights.h5 file); without it the perceptual term is off.")
@click.option("--overwrite", is_flag=True)
@_user_errors
def demo_command(out, size, minutes, vgg_weights, overwrite):
    """End to end on the built-in MRI volume: prepare, zero-filled baseline, train a CPU-sized PPGR, evaluate."""
    from dagan_tf import recipes
    from dagan_tf.data.demo import demo_volume_path
    from dagan_tf.data.prepare import PrepareConfig, prepare
    from dagan_tf.evaluate import evaluate, format_table
    from dagan_tf.inference import load_run_reconstructor
    from dagan_tf.outputs import check_new_output
    from dagan_tf.training.run import mask_spec, train

    out = check_new_output(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    click.echo(f"1/4 preparing the demo volume {demo_volume_path()}")
    prepare([str(demo_volume_path())], data, PrepareConfig(size=size, split=(0.6, 0.2, 0.2), slabs=5),
            overwrite=True)
    overrides = [f"model.image_size={size}", "model.width=0.25", "data.mask=gaussian2d", "data.ratio=0.3",
                 "train.batch_size=8", "train.val_batch_size=16", "train.steps_per_epoch=20",
                 "train.precision=mixed_bfloat16", f"train.max_minutes={minutes}", "train.epochs=1000",
                 "train.patience=0", "train.lr_halve_every=0"]
    if vgg_weights:
        overrides.append(f"vgg.weights={vgg_weights}")
    else:
        overrides.append("loss.vgg=0")
        click.echo("   note: no --vgg-weights given, so the VGG perceptual term is off (no download offline)")
    config = recipes.apply_overrides(recipes.load_recipe("ppgr"), overrides)
    click.echo("2/4 zero-filled baseline on the test slab")
    spec = mask_spec(config)
    click.echo(format_table(evaluate(data, spec, out / "eval-zero-filled", overwrite=True)))
    click.echo(f"3/4 training a CPU-sized PPGR (width 0.25, {size}², bf16) for {minutes:g} minutes")
    train(out / "run", config, data, overwrite=True, verbose=2)
    click.echo("4/4 evaluating the trained model against zero-filled")
    model, _ = load_run_reconstructor(out / "run")
    click.echo(format_table(evaluate(data, spec, out / "eval", model=model, overwrite=True,
                                     title="demo: PPGR vs zero-filled")))
    click.echo(f"reports in {out.resolve()} (eval/report.md); TensorBoard logs in {out / 'run' / 'logs'}")


if __name__ == "__main__":
    main()
