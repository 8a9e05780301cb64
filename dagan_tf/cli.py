"""The ``dagan-tf`` command line: each command is a few calls into the library.

One error boundary (:class:`DaganCLI`): bad input, usage errors, operating-system
failures and interrupts end in a single ``Error: …`` line on standard error and
a non-zero exit status, never a traceback.  TensorFlow is imported only inside
the commands that need it, after their arguments are checked, so argument
errors come back at once.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

import click

from dagan_tf import __version__
from dagan_tf.errors import DaganError
from dagan_tf.hardware import INFERENCE_PRECISIONS, KERNEL_CLASSES, target_isa, target_kernels
from dagan_tf.recipes import STRATEGIES

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REGIME_OPTION = click.option(
    "--regime", type=click.Choice(["magnitude", "phase"]), default=None,
    help="Single-coil k-space simulation: of the real image (magnitude, the papers') or of "
         "image·exp(i·smooth random phase) (phase). Default: the run's, else magnitude.")
PHASE_SEED_OPTION = click.option(
    "--phase-seed", type=click.IntRange(min=0), default=0, show_default=True,
    help="Seed of the phase regime's per-slice phases (the same slices get the same phases).")


def precision_option(default: str, what: str):
    """``--precision`` of a command that runs networks (``what``: which of them it applies to)."""
    return click.option(
        "--precision", type=click.Choice(INFERENCE_PRECISIONS), default=default, show_default=True,
        help=f"Compute precision of {what}: bfloat16 (inputs, outputs and data consistency stay float32), "
             "float32, or auto = bfloat16 where this machine computes it natively (AMX or AVX512-BF16 CPUs, GPUs "
             "from Ampere on), else float32.")


def _inference_precision(requested: str) -> str:
    """``float32`` or ``bfloat16`` for ``--precision`` (imports TensorFlow, quietly, to see the GPUs)."""
    from dagan_tf.hardware import machine_inference_precision

    _load_tensorflow()
    return machine_inference_precision(requested)


TRUST_NOTE = ("A SavedModel runs its own graph: load only exports you trust; dagan-tf checks that an export "
              "carries its signatures before running it.")
POSITIVE = click.IntRange(min=1)
NON_NEGATIVE = click.IntRange(min=0)
RATIO = click.FloatRange(0, 1, min_open=True)
MULTICOIL_MASK = ("vds1d", 0.25, 12)  # default mask of multi-coil data: R = 4 with 12 centre lines (cWGAN-AGB)


class DaganCLI(click.Group):
    """The command group with the package's error boundary (see module doc)."""

    def main(self, args=None, prog_name=None, **kwargs):
        from dagan_tf.outputs import is_os_failure, os_error

        try:
            return super().main(args, prog_name, standalone_mode=False, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            command = exc.ctx.command_path if exc.ctx else "dagan-tf"
            _fail(f"{exc.format_message()} (see '{command} --help')", exc.exit_code)
        except click.ClickException as exc:
            _fail(exc.format_message(), exc.exit_code)
        except DaganError as exc:
            _fail(str(exc), exc.exit_code)
        except (click.Abort, KeyboardInterrupt):
            _fail("interrupted", 130)
        except MemoryError:
            _fail("out of memory; use a smaller --batch-size or image size", 1)
        except Exception as exc:
            if is_os_failure(exc):
                _fail(str(os_error(exc)), 1)
            raise
        sys.exit(0)


def _fail(message: str, code: int) -> None:
    click.echo(f"Error: {' '.join(message.split())}", err=True)
    sys.exit(code)


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
                          "or a DAGAN .mat mask file; with --run, defaults to the run's own mask; on multi-coil "
                          "data to vds1d 0.25 with 12 centre lines."),
        click.option("--ratio", type=RATIO, default=None,
                     help="Sampled fraction in (0, 1]; not with a .mat mask file (it has its own)."),
        click.option("--mask-seed", type=NON_NEGATIVE, default=0, show_default=True, help="Seed of the mask."),
        click.option("--acs", type=NON_NEGATIVE, default=None,
                     help="Fully sampled centre lines (1-D kinds) or block side (2-D kinds)."),
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


def _check_prepared(data: str) -> dict:
    from dagan_tf.data.prepare import check_prepared

    return check_prepared(data)


def _echo(text: str) -> None:
    click.echo(text)


def _load_tensorflow() -> None:
    """Import TensorFlow with its C++ start-up log lines (oneDNN, CPU features) kept off standard error.

    TensorFlow 2.21 prints them before ``TF_CPP_MIN_LOG_LEVEL`` takes effect; ``-v`` shows them.
    Python errors raised by the import are not affected.
    """
    if "tensorflow" in sys.modules or logging.getLogger().level <= logging.INFO:
        importlib.import_module("tensorflow")
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        importlib.import_module("tensorflow")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@click.group(cls=DaganCLI, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dagan-tf")
@click.option("-v", "--verbose", is_flag=True, help="Show informational log messages.")
def main(verbose: bool) -> None:
    """GAN-based compressed-sensing MRI reconstruction (DAGAN and relatives)."""
    from dagan_tf import progress

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s: %(message)s", stream=sys.stderr)
    progress.enable()


@main.command("masks")
@click.option("--kind", required=True, help="gaussian1d, gaussian2d, poisson2d, vds1d, equispaced, random1d.")
@click.option("--ratio", type=RATIO, required=True, help="Sampled fraction in (0, 1].")
@click.option("--size", type=click.IntRange(min=2), required=True, help="Mask side N (N×N).")
@click.option("--acs", type=NON_NEGATIVE, default=None, help="Fully sampled centre lines / block side.")
@click.option("--seed", type=NON_NEGATIVE, default=0, show_default=True, help="Seed of the mask.")
@click.option("--out", required=True, help="Output .npy file (must not exist unless --overwrite).")
@click.option("--png", default=None, help="Also write the mask as a PNG (must not exist unless --overwrite).")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
def masks_command(kind, ratio, size, acs, seed, out, png, overwrite):
    """Make a centred undersampling mask and print its sampled fraction."""
    from dagan_tf.masks import make_mask, sampled_fraction, write_mask

    if not out.endswith(".npy"):
        raise DaganError(f"--out must be a .npy file, got {out}")
    mask = make_mask(kind, (size, size), ratio, seed, acs)
    write_mask(mask, out, png, overwrite)
    click.echo(f"sampled fraction: {sampled_fraction(mask):.4f}")


@main.command("prepare")
@click.argument("sources", nargs=-1, required=True)
@click.option("--out", required=True, help="Output folder (must not exist unless --overwrite).")
@click.option("--size", type=click.IntRange(min=16), default=256, show_default=True, help="Image side.")
@click.option("--split", "split_text", default="0.7,0.1,0.2", show_default=True,
              help="train,val,test fractions of the subjects.")
@click.option("--seed", type=NON_NEGATIVE, default=0, show_default=True, help="Seed of the subject split.")
@click.option("--min-foreground", type=click.FloatRange(0, 1, max_open=True), default=0.1, show_default=True,
              help="Drop slices whose foreground covers less than this fraction.")
@click.option("--fit", type=click.Choice(["resize", "pad-crop"]), default="resize", show_default=True,
              help="How slices reach --size: scale the longer side, or centre pad/crop.")
@click.option("--normalise", type=click.Choice(["minmax", "max"]), default="minmax", show_default=True,
              help="Per-volume intensity normalisation to [0, 1].")
@click.option("--volume-index", type=NON_NEGATIVE, default=None, help="Volume to take from 4-D files.")
@click.option("--key", default=None, help="Array key in .npz/.mat/.h5 files.")
@click.option("--subject-regex", default=None,
              help="Regex on the source path whose first group is the subject id (e.g. 'pat(\\d+)').")
@click.option("--exclude", multiple=True, help="Skip files whose name matches this glob (repeatable).")
@click.option("--slabs", type=POSITIVE, default=1, show_default=True,
              help="Cut each volume into K slabs counted as subjects (single-volume demos only).")
@click.option("--coils", type=NON_NEGATIVE, default=0, is_flag=False, flag_value=8, show_default=True,
              help="Simulate multi-coil k-space with this many birdcage coils ('--coils' alone: 8; "
                   "0: single-coil magnitude images).")
@click.option("--noise-snr", type=click.FloatRange(0, min_open=True), default=None,
              help="With --coils: complex Gaussian noise, k-space RMS / noise standard deviation.")
@click.option("--no-phase", is_flag=True, help="With --coils: no smooth random phase (real-valued images).")
@click.option("--labels", multiple=True, metavar="FILE|DIR|GLOB",
              help="Label volumes to pair with the images (for the SIS): the same .npz/.mat file (key --label-key) "
                   "or a file named like the image plus a suffix (sub1_seg.nii.gz for sub1.nii.gz). Repeatable.")
@click.option("--label-key", default="seg", show_default=True, help="Key of the label array in .npz/.mat files.")
@click.option("--label-merge", type=click.Choice(["freesurfer"]), default=None,
              help="Merge label values into classes (freesurfer: background, CSF, cortical grey, white, deep grey).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder (only once the new one is complete).")
def prepare_command(sources, out, size, split_text, seed, min_foreground, fit, normalise, volume_index, key,
                    subject_regex, exclude, slabs, coils, noise_snr, no_phase, labels, label_key, label_merge,
                    overwrite):
    """Prepare 2-D slices from MRI volumes (NIfTI, DICOM folders, HDF5, npy/npz, mat, PNG)."""
    _load_tensorflow()
    from dagan_tf.data.prepare import PrepareConfig, prepare

    config = PrepareConfig(size=size, split=_parse_split(split_text), seed=seed, min_foreground=min_foreground,
                           fit=fit, normalise=normalise, volume_index=volume_index, key=key,
                           subject_regex=subject_regex, exclude=tuple(exclude), slabs=slabs, coils=coils,
                           noise_snr=noise_snr, phase=not no_phase, labels=tuple(labels), label_key=label_key,
                           label_merge=label_merge)
    manifest = prepare(list(sources), out, config, overwrite)
    for split, c in manifest["counts"].items():
        click.echo(f"{split:5s}: {c['subjects']:4d} subjects {c['slices']:6d} slices")


@main.command("eval")
@click.option("--model", "baselines", multiple=True,
              type=click.Choice(["zero-filled", "zero-filled-dc", "sense", "tv", "wavelet"]),
              help="Classical reconstruction(s) to score beside zero-filled (repeatable): zero-filled-dc "
                   "(1 and 100 projections), sense, tv, wavelet (these three need the 'cs' extra).")
@click.option("--run", "run_dir", default=None,
              help="A training run folder to evaluate beside zero-filled and, unless --model or --no-baselines "
                   "is given, the classical baselines (projection in the magnitude regime, tv and wavelet with "
                   "tuned weights).")
@click.option("--no-baselines", is_flag=True, help="With --run: no classical baselines (quick runs; said in the report).")
@click.option("--data", required=True, help="Prepared data folder.")
@mask_options
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True,
              help="Split to score (every slice of it).")
@click.option("--dc", is_flag=True, help="Apply data consistency to the network output (row 'model+dc'); "
                                         "adds the zero-filled-dc baseline (magnitude regime).")
@REGIME_OPTION
@PHASE_SEED_OPTION
@click.option("--lam", type=click.FloatRange(0), default=None,
              help="Regularisation weight of sense/tv/wavelet (default: --tune-lambda, else 0 for sense, "
                   "0.001 for tv and wavelet).")
@click.option("--tune-lambda", is_flag=True, help="Pick the tv/wavelet weight by NMSE on validation slices.")
@click.option("--cs-iterations", type=POSITIVE, default=100, show_default=True,
              help="Iterations of the sense/tv/wavelet solvers.")
@click.option("--cs-backend", type=click.Choice(["sigpy", "bart"]), default="sigpy", show_default=True,
              help="Solver of sense/tv/wavelet: sigpy (the 'cs' extra) or BART's 'bart pics' (run single-threaded; "
                   "Debian package 'bart').")
@click.option("--maps", "maps_kind", type=click.Choice(["espirit", "true"]), default="espirit", show_default=True,
              help="Multi-coil data: coil maps estimated by ESPIRiT from the fully sampled centre (cached in the "
                   "data folder; 'cs' extra), or the split's true maps.")
@click.option("--calib-width", type=click.IntRange(min=4), default=24, show_default=True,
              help="Side of the fully sampled k-space centre ESPIRiT calibrates on.")
@click.option("--dagan-compat-metrics", is_flag=True, help="The original DAGAN's metric definitions.")
@click.option("--batch-size", type=POSITIVE, default=16, show_default=True, help="Slices per batch.")
@click.option("--out", required=True, help="Output folder (must not exist unless --overwrite).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder (only once the new one is complete).")
@click.option("--sis", "sis_run", default=None, metavar="SEG_RUN",
              help="Add the semantic interpretability score with this segmenter run (the split needs --labels).")
@click.option("--fid", "fid_weights", default=None, metavar="WEIGHTS.npz",
              help="Add the FID to the ground truth (standard TF Inception 2015-12-05 weights as .npz; "
                   "scripts/convert_fid_weights.py makes it).")
@click.option("--sis-class", "sis_classes", type=POSITIVE, multiple=True,
              help="Score only this class with --sis (repeatable; default: every foreground class).")
@precision_option("float32", "the --run network (float32 by default: the same numbers on every machine)")
def eval_command(baselines, run_dir, no_baselines, data, mask_kind, ratio, mask_seed, acs, per_slice_masks, split,
                 dc, regime, phase_seed, lam, tune_lambda, cs_iterations, cs_backend, maps_kind, calib_width,
                 dagan_compat_metrics, batch_size, out, overwrite, sis_run, sis_classes, fid_weights, precision):
    """Score zero-filled, classical baselines and a trained run on a whole split, on the same k-space;
    writes metrics.json, per_slice.csv, examples.png and report.md."""
    from dagan_tf import recipes
    from dagan_tf.outputs import check_new_output

    if not baselines and run_dir is None:
        raise DaganError("give --model BASELINE and/or --run RUN")
    if run_dir is None and dc:
        raise DaganError("--dc needs a trained model (--run); --model zero-filled-dc is the baseline")
    check_new_output(out, overwrite)
    manifest = _check_prepared(data)
    if sis_classes and sis_run is None:
        raise DaganError("--sis-class needs --sis SEG_RUN")
    if fid_weights is not None and not Path(fid_weights).is_file():
        raise DaganError(f"--fid weights not found: {fid_weights}")
    if sis_run is not None and not (Path(sis_run) / "config.yaml").is_file():
        raise DaganError(f"--sis {sis_run} is not a training run (no config.yaml)")
    if sis_run is not None and "labels" not in manifest:
        raise DaganError(f"--sis needs label maps in {data}; prepare it with --labels")
    if run_dir is None and mask_kind is None:
        if "multicoil" not in manifest:
            raise DaganError("--mask is required without --run")
        mask_kind, ratio, acs = MULTICOIL_MASK  # the cWGAN-AGB setting
    if run_dir is not None:
        if not (Path(run_dir) / "config.yaml").is_file():
            raise DaganError(f"{run_dir} is not a training run (no config.yaml)")
        d = recipes.load_config_file(Path(run_dir) / "config.yaml")["data"]
        regime = regime or d["regime"]
        if mask_kind is None:
            mask_kind, ratio, mask_seed, acs, per_slice_masks = (d["mask"], d["ratio"], d["mask_seed"], d["acs"],
                                                                 d["per_sample_masks"])
    spec = _mask_spec(mask_kind, ratio, mask_seed, acs, per_slice_masks)
    precision = _inference_precision(precision)
    from dagan_tf.evaluate import evaluate_methods, format_table

    result = evaluate_methods(
        data, spec, out, split=split, run_dir=run_dir, dc=dc, baselines=list(baselines), no_baselines=no_baselines,
        regime=regime or "magnitude", phase_seed=phase_seed, lam=lam, tune=tune_lambda, iterations=cs_iterations,
        backend=cs_backend, calib_width=calib_width if maps_kind == "espirit" else None,
        dagan_compat=dagan_compat_metrics, batch_size=batch_size, overwrite=overwrite, sis_run=sis_run,
        sis_classes=list(sis_classes) or None, fid_weights=fid_weights, precision=precision, echo=_echo)
    click.echo(format_table(result))
    click.echo(f"written to {out}")


@main.command("train")
@click.option("--recipe", default=None, help="Recipe name ('dagan-tf recipes' lists them) or a recipe YAML file.")
@click.option("--data", default=None, help="Prepared data folder.")
@click.option("--out", "run_dir", required=True, help="Run folder.")
@click.option("--mask", "mask_kind", default=None, help="Override data.mask (kind or DAGAN .mat file).")
@click.option("--ratio", type=RATIO, default=None, help="Override data.ratio (not with a .mat mask).")
@click.option("--regime", type=click.Choice(["magnitude", "phase"]), default=None,
              help="Override data.regime: k-space simulated from the real image (magnitude) or from "
                   "image·exp(i·smooth random phase) (phase).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. train.batch_size=8; repeat for several. "
                   "'dagan-tf recipes show NAME' lists every key with its meaning.")
@click.option("--epochs", type=POSITIVE, default=None, help="Override train.epochs (also with --resume).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last intact checkpoint.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing run folder; the old run stays until the new training ends.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default=None,
              help="Override train.strategy (also with --resume): how tf.distribute spreads the batches; "
                   "multi-worker reads TF_CONFIG (README: 'Several machines').")
def train_command(recipe, data, run_dir, mask_kind, ratio, regime, overrides, epochs, resume, overwrite,
                  strategy):
    """Train a recipe on a prepared data folder (resumable, early stopping on validation NMSE)."""
    from dagan_tf import recipes

    config = None
    if not resume:
        if recipe is None or data is None:
            raise DaganError("--recipe and --data are required (or --resume an existing run)")
        config = recipes.load(recipe)
        extra = []
        if mask_kind is not None:
            extra.append(f"data.mask={mask_kind}")
            if mask_kind.endswith(".mat") and ratio is None:
                extra.append("data.ratio=null")
        if ratio is not None:
            extra.append(f"data.ratio={ratio}")
        if regime is not None:
            extra.append(f"data.regime={regime}")
        config = recipes.apply_overrides(config, extra + list(overrides))
        _check_prepared(data)
    elif recipe or data or mask_kind or ratio or regime or overwrite:
        raise DaganError("--resume takes the run's own config.yaml; only --epochs, --strategy and the time "
                         "budgets (--set train.max_minutes / train.max_cpu_minutes) may change")

    _load_tensorflow()
    from dagan_tf.training.distribute import is_chief
    from dagan_tf.training.run import train

    train(run_dir, config, data, resume, epochs, overwrite, echo=_echo, strategy=strategy,
          budgets=overrides if resume else ())
    click.echo(f"run saved in {run_dir}" if is_chief() else f"worker done; the chief saved the run in {run_dir}")


@main.group("recipes", invoke_without_command=True)
@click.pass_context
def recipes_command(ctx):
    """List the recipes with their descriptions ('recipes show NAME' prints one)."""
    from dagan_tf import recipes

    if ctx.invoked_subcommand is None:
        names = recipes.recipe_names()
        width = max(map(len, names))
        for name in names:
            click.echo(f"{name:{width}s} {recipes.describe(name)}")


@recipes_command.command("show")
@click.argument("name")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a value before printing (repeatable), as 'train --set' does.")
def recipes_show_command(name, overrides):
    """Print the resolved recipe NAME (or a .yaml file) with the meaning of every key."""
    from dagan_tf import recipes

    click.echo(recipes.dump(recipes.apply_overrides(recipes.load(name), list(overrides))), nl=False)


@main.command("export")
@click.argument("run_dir")
@click.option("--out", required=True, help="SavedModel folder for TF Serving (e.g. export/ppgr/1).")
@click.option("--kernels", type=click.Choice(["auto", *KERNEL_CLASSES]), default="auto",
              show_default=True, help="Build the graph for the CPU that will serve it: its oneDNN instruction-set "
              "class (lscpu flags avx512f and amx_tile -> amx, avx512f -> avx512, else avx2 -> avx2); auto: this "
              "machine's.")
@precision_option("auto", "the exported network (with --kernels other than auto, auto means float32: pass "
                           "--precision bfloat16 for a serving CPU with AMX or AVX512-BF16)")
@click.option("--overwrite", is_flag=True, help="Replace an existing export (only once the new one is complete).")
def export_command(run_dir, out, kernels, precision, overwrite):
    """Export a run's network as a SavedModel (signatures serving_default and from_kspace)."""
    from dagan_tf.outputs import check_new_output

    check_new_output(out, overwrite)
    if not (Path(run_dir) / "config.yaml").is_file():
        raise DaganError(f"{run_dir} is not a training run (no config.yaml)")

    precision = "float32" if precision == "auto" and kernels != "auto" else _inference_precision(precision)
    from dagan_tf.export import export_run_network
    from dagan_tf.training.trained import load_run_network

    with target_kernels(None if kernels == "auto" else kernels):  # the network is built and traced inside
        click.echo(f"loading the network of {run_dir} (best weights)")
        network, config = load_run_network(run_dir, inference=True, precision=precision)
        isa = target_isa()
        click.echo(f"writing the SavedModel (signatures serving_default, from_kspace; {isa} kernels, computing in "
                   f"{precision}) to {out}")
        export_run_network(network, config, out, precision, overwrite)
    click.echo(f"exported to {out}")


@main.command("predict", help="Reconstruct a volume slice by slice from simulated (or given) undersampled "
                              f"k-space.\n\n{TRUST_NOTE}")
@click.option("--model", "model_path", required=True, help="Export folder (trusted) or run folder.")
@click.option("--input", "source", required=True, help="Volume (NIfTI, …) or undersampled k-space HDF5.")
@click.option("--out", required=True, help="Output NIfTI file (.nii or .nii.gz).")
@click.option("--mask", "mask_kind", default=None,
              help="Mask kind or DAGAN .mat file (image input; default: the model's training mask).")
@click.option("--ratio", type=RATIO, default=None, help="Sampled fraction in (0, 1] (mask kinds).")
@click.option("--mask-seed", type=NON_NEGATIVE, default=0, show_default=True, help="Seed of the mask.")
@click.option("--acs", type=NON_NEGATIVE, default=None, help="Fully sampled centre lines / block side.")
@click.option("--dc", is_flag=True, help="Apply data consistency to the network output.")
@REGIME_OPTION
@PHASE_SEED_OPTION
@precision_option("float32", "a run folder's network (float32 by default: the same numbers on every machine; an export "
                             "computes in the precision it was exported with)")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file (only once the new one is complete).")
def predict_command(model_path, source, out, mask_kind, ratio, mask_seed, acs, dc, regime, phase_seed, precision,
                    overwrite):
    from dagan_tf.outputs import check_new_output

    check_new_output(out, overwrite)
    if not out.endswith((".nii", ".nii.gz")):
        raise DaganError(f"--out must be a .nii or .nii.gz file, got {out}")
    if not Path(source).exists():
        raise DaganError(f"path not found: {source}")
    if not Path(model_path).exists():
        raise DaganError(f"path not found: {model_path}")
    spec = None if mask_kind is None else _mask_spec(mask_kind, ratio, mask_seed, acs, False)

    precision = _inference_precision(precision)
    from dagan_tf.predict import predict_volume

    predict_volume(model_path, source, out, spec, dc, overwrite, regime, phase_seed, echo=_echo, precision=precision)
    click.echo(f"written {out}")


@main.command("compare")
@click.argument("models", nargs=-1)
@click.option("--baseline", "baselines", multiple=True, type=click.Choice(["tv", "wavelet"]),
              help="Classical baseline to add, its weight tuned on the validation split (repeatable).")
@click.option("--data", required=True, help="Prepared data folder (single-coil).")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True,
              help="Split to compare on.")
@click.option("--mask", "mask_kind", default=None, help="One mask for all (default: the runs' own, which must agree).")
@click.option("--ratio", type=RATIO, default=None, help="Sampled fraction with --mask.")
@click.option("--mask-seed", type=NON_NEGATIVE, default=0, show_default=True, help="Seed of --mask.")
@click.option("--acs", type=NON_NEGATIVE, default=None, help="Centre lines / block side of --mask.")
@click.option("--per-slice-masks", is_flag=True, help="With --mask: a seeded mask per slice.")
@click.option("--dc", is_flag=True, help="Data consistency on every network's output "
                                         "(rows named as the runs; exports use their from_kspace signature).")
@click.option("--regime", type=click.Choice(["phase", "magnitude", "both"]), default="phase", show_default=True,
              help="k-space simulation: phase-bearing (realistic), magnitude (the papers'), or both (two tables).")
@PHASE_SEED_OPTION
@click.option("--reference", default=None, help="Method the paired statistics compare against (default: the first).")
@click.option("--sis", "sis_run", default=None, metavar="SEG_RUN", help="Add the SIS with this segmenter run.")
@click.option("--fid", "fid_weights", default=None, metavar="WEIGHTS.npz",
              help="Add the FID to the ground truth (standard TF Inception 2015-12-05 weights as .npz; "
                   "scripts/convert_fid_weights.py makes it).")
@click.option("--cache", "cache_dir", default=None, help="Reconstruction cache folder (default: ~/.cache/dagan-tf).")
@click.option("--no-cache", is_flag=True, help="Neither read nor write cached reconstructions.")
@click.option("--out", required=True, help="Output folder.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder (only once the new one is complete).")
@precision_option("float32", "the run folders' networks (float32 by default: the same numbers on every machine; "
                             "exports compute in the precision they were exported with)")
def compare_command(models, baselines, data, split, mask_kind, ratio, mask_seed, acs, per_slice_masks, dc, regime,
                    phase_seed, reference, sis_run, fid_weights, cache_dir, no_cache, out, overwrite, precision):
    """Every run or export (and baseline) on the same slices, masks and metrics, with paired statistics."""
    from dagan_tf.outputs import check_new_output

    check_new_output(out, overwrite)
    _check_prepared(data)
    if not models and not baselines:
        raise DaganError("give at least one run or export (or --baseline)")
    for path in models:
        if not Path(path).exists():
            raise DaganError(f"path not found: {path}")
    if sis_run is not None and not (Path(sis_run) / "config.yaml").is_file():
        raise DaganError(f"--sis {sis_run} is not a training run (no config.yaml)")
    if fid_weights is not None and not Path(fid_weights).is_file():
        raise DaganError(f"--fid weights not found: {fid_weights}")
    spec = None if mask_kind is None else _mask_spec(mask_kind, ratio, mask_seed, acs, per_slice_masks)
    precision = _inference_precision(precision)
    from dagan_tf.compare import compare, default_cache_dir

    cache = None if no_cache else Path(cache_dir) if cache_dir else default_cache_dir()
    summary = compare(list(models), data, out, list(baselines), split, spec, dc, regime, reference, sis_run, cache,
                      phase_seed, fid_weights=fid_weights, overwrite=overwrite, echo=_echo, precision=precision)
    for reg in summary:
        click.echo(f"{reg} regime: {Path(out) / reg / 'comparison.md'}")
    click.echo(f"written to {out}")


@main.command("demo")
@click.option("--out", required=True, help="Output folder for the prepared data, run and reports.")
@click.option("--size", type=click.IntRange(min=16), default=128, show_default=True, help="Image side for the demo.")
@click.option("--steps", type=POSITIVE, default=None,
              help="Training steps (default: the demo's fixed amount; the same numbers on every machine).")
@click.option("--minutes", type=click.FloatRange(0, min_open=True), default=None,
              help="Optional wall-clock cap on training; the demo says when it cut training short.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
def demo_command(out, size, steps, minutes, overwrite):
    """End to end on the built-in MRI volume, phase-bearing k-space at R4: prepare, zero-filled and TV, train a
    residual RecNet (recnet-fast), evaluate it beside them, export it and reconstruct the volume."""
    from dagan_tf.outputs import check_new_output

    check_new_output(out, overwrite)
    _load_tensorflow()
    from dagan_tf.demo import run_demo

    run_demo(out, size, steps, minutes, overwrite, echo=_echo)


if __name__ == "__main__":
    main()
