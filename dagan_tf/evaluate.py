"""Evaluate reconstructions on a whole prepared split and write a report.

A *reconstructor* maps a :class:`~dagan_tf.data.batches.KSpaceBatch` from
:func:`dagan_tf.data.pipeline.evaluation_dataset` (``with_kspace=True``) to a
``[B, H, W, 1]`` image.  ``zero_filled`` is always evaluated; a model adds a
``model`` entry (named ``model+dc`` when data consistency is applied).
Outputs (written atomically into ``out``)::

    metrics.json   {"zero_filled": {"psnr": {"mean", "std", "per_volume"}, ..., "ms_per_slice"[, "fid", "sis"]},
                    "model": ...,
                    "n_slices", "n_subjects", "data_range", "mask", "split"}
    per_slice.csv  index, subject, slice (the source's axial index), data_range, <name>_<metric> ...
    examples.png   titled rows: ground truth | zero-filled | error [| model | error], error maps on
                   one fixed scale with a colour bar, per-image PSNR/SSIM (:mod:`dagan_tf.figures`)
    report.md      the table and settings
    refinement_<name>.png   for a refined network: its example slices beside the change λ·V(x)
"""
from __future__ import annotations

import csv
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

from dagan_tf import metrics, recipes
from dagan_tf.data.batches import KSpaceBatch, Reconstructor
from dagan_tf.data.pipeline import evaluation_dataset, evaluation_masks
from dagan_tf.data.prepare import SPLITS, load_split
from dagan_tf.errors import DaganError
from dagan_tf.figures import ERROR_MAX, FigureRow, change_figure, comparison_figure, write_png
from dagan_tf.masks import MaskSpec, sampled_fraction
from dagan_tf.outputs import atomic_output_dir, check_new_output
from dagan_tf.progress import Stage

N_EXAMPLES = 4
MODEL_ROWS = ("model", "model+dc", "stage1", "stage1+dc")  # eval's trained rows (compare: the runs' names)


@dataclass
class SISScorer:
    """Semantic interpretability score (Seitzer et al.): per class ``k`` (background excluded), the mean Dice
    of the segmenter on a reconstruction over the slices where ``k`` is in the ground-truth labels, divided
    by the same mean on the fully sampled images; SIS is the mean over ``classes``."""

    segment: Callable[[tf.Tensor], np.ndarray]  # images [B, H, W, 1] in [0, 1] -> labels [B, H, W]
    classes: list[int]
    segmenter: str
    size: int | None = None  # the segmenter's image side

    def scores(self, dice: dict[str, np.ndarray], result: dict) -> dict:
        """Add ``sis`` to each row of ``result`` from per-slice Dice ``[N, K]`` (``dice["ground_truth"]``
        included); the SIS settings."""
        with warnings.catch_warnings():  # a class absent from every slice gives NaN, skipped by the means
            warnings.simplefilter("ignore", RuntimeWarning)
            reference = np.nanmean(dice["ground_truth"], axis=0)
            for name, values in dice.items():
                if name != "ground_truth":
                    result[name]["sis"] = float(np.nanmean(np.nanmean(values, axis=0) / reference))
        return {"segmenter": self.segmenter, "classes": self.classes,
                "ground_truth_dice": float(np.nanmean(reference)) if np.isfinite(reference).any() else None,
                "ground_truth_dice_per_class": dict(zip(map(str, self.classes), map(float, reference))),
                "definition": "mean Dice on the reconstruction / mean Dice on the ground truth, per class over the "
                              "slices where it is present, background ignored, averaged over classes "
                              + ", ".join(map(str, self.classes))}


def sis_scorer(seg_run: str | Path, classes: list[int] | None = None) -> SISScorer:
    """The :class:`SISScorer` of a segmenter run (``recipe segmenter``); ``classes`` default: all foreground."""
    from dagan_tf.training.trained import load_run_network

    network, config = load_run_network(seg_run, inference=True)
    if config["trainer"] != "segmentation":
        raise DaganError(f"--sis {seg_run} is a {config['recipe']} run; it needs a segmenter run "
                         "('dagan-tf train --recipe segmenter')")
    n = config["model"]["classes"]
    bad = [k for k in classes or [] if not 0 < k < n]
    if bad:
        raise DaganError(f"--sis-class {bad[0]} is not a foreground class of {seg_run} (1..{n - 1})")
    segment = tf.function(lambda x: tf.argmax(network(x, training=False), axis=-1), reduce_retracing=True)
    return SISScorer(lambda images: segment(tf.cast(images, tf.float32)).numpy(), list(classes or range(1, n)),
                     str(seg_run), config["model"]["image_size"])


def zero_filled(batch: KSpaceBatch) -> tf.Tensor:
    return batch.zero_filled


def evaluate(data: str | Path, mask: MaskSpec, out: str | Path, split: str = "test",
             reconstructors: dict[str, Reconstructor] | None = None, batch_size: int = 16,
             dagan_compat: bool = False, overwrite: bool = False, title: str = "zero-filled evaluation",
             settings: dict | None = None, maps: tuple[str, np.ndarray] | None = None,
             regime: str = "magnitude", phase_seed: int = 0, sis: "SISScorer | None" = None,
             example_indices: list[int] | None = None, fid=None, models=MODEL_ROWS) -> dict:
    """Score zero-filled and each of ``reconstructors`` (name -> reconstructor) on every slice of ``split``.

    ``settings`` (e.g. the baselines' regularisation weights) are recorded in the
    result.  ``maps`` = ``(description, [1 or N, C, H, W])`` replaces a multi-coil split's own
    sensitivities (e.g. ESPIRiT estimates).  ``regime`` (``magnitude`` or ``phase``, with
    ``phase_seed``) says how single-coil k-space is simulated (:mod:`dagan_tf.data.pipeline`);
    multi-coil splits carry their own.  ``sis`` adds the semantic interpretability score of every
    reconstruction (:class:`SISScorer`; the split needs label maps).  ``example_indices`` picks the
    slices of ``examples.png`` (default: evenly spaced).  ``fid`` (a :class:`dagan_tf.models.fid.FIDFeatures`)
    adds the FID between each reconstruction and the ground truth of the split.  Returns the metrics dict (also
    written to ``out/metrics.json``), with ``warnings`` where a classical baseline scores above one of the
    ``models`` rows (the trained reconstructors' names).
    """
    check_new_output(out, overwrite)
    prepared = load_split(data, split)
    mask.validate()
    masks = evaluation_masks(prepared, mask)
    _check_inputs(prepared, masks, sis, data, split)
    recons: dict[str, Reconstructor] = {"zero_filled": zero_filled, **(reconstructors or {})}
    ranges = metrics.volume_data_ranges(np.asarray(prepared.images), prepared.subjects)
    n = len(prepared.subjects)
    scores = _Scores(list(recons), ranges, prepared.labels, dagan_compat, sis, fid, set(
        example_indices if example_indices is not None
        else np.linspace(0, n - 1, min(N_EXAMPLES, n)).astype(int).tolist()))
    with Stage(f"eval {' + '.join(recons)} on {split}", n, "slices") as stage:
        for batch in evaluation_dataset(prepared, batch_size, masks, True, None if maps is None else maps[1],
                                        regime, phase_seed, SPLITS.index(split)):
            scores.add(batch, scores.reconstruct(recons, batch))
            stage.update(int(batch.target.shape[0]))
    result = scores.result(prepared.subjects)
    fractions = [sampled_fraction(m) for m in masks]
    result.update({
        "n_slices": int(n),
        "n_subjects": int(len(np.unique(prepared.subjects))),
        "data_range": "dagan-compat (PSNR 1, SSIM 2)" if dagan_compat
        else "per-volume maximum of the ground truth",
        "metric_definitions": "dagan-compat" if dagan_compat else "standard",
        "split": split,
        "reconstructor_settings": settings or {},
        "regime": (regime if regime == "magnitude" else f"phase (seed {phase_seed})") if not prepared.coils
        else "multi-coil k-space of the prepared split (see its manifest)",
        "coils": prepared.coils or None,
        "maps": None if not prepared.coils else (maps[0] if maps is not None else "the split's own (true) maps"),
        "mask": {"kind": mask.kind, "ratio": float(np.mean(fractions)) if mask.is_file else mask.ratio,
                 "seed": None if mask.is_file else mask.seed, "per_sample": mask.per_sample,
                 "sampled_fraction": float(np.mean(fractions))},
    })
    result["warnings"] = baseline_warnings(result, models)
    with atomic_output_dir(out, overwrite) as tmp:
        _write_outputs(tmp, result, scores.per_slice, prepared, ranges, scores.examples, list(recons), title)
        for name, change in scores.changes.items():
            _write_change_figure(tmp / f"refinement_{name}.png", change, scores.examples, name, prepared)
    return result


def _check_inputs(prepared, masks: np.ndarray, sis: "SISScorer | None", data, split: str) -> None:
    """One-line errors for masks or a segmenter that do not fit the split's slices."""
    shape = prepared.images.shape[1:]
    if sis is not None and prepared.labels is None:
        raise DaganError(f"--sis needs label maps in the {split} split of {data}; prepare it with --labels")
    if sis is not None and sis.size not in (None, shape[0]):
        raise DaganError(f"the segmenter {sis.segmenter} was trained on {sis.size}² images, {data} holds "
                         f"{shape[0]}² slices")
    if masks.shape[1:] != shape:
        raise DaganError(f"mask shape {masks.shape[1:]} differs from the image shape {shape}")


class _Scores:
    """What :func:`evaluate` gathers over a split, batch by batch, in slice order: per-slice metrics
    (``ranges`` the per-slice data ranges), milliseconds per reconstructor, what a refinement changed, FID
    features, per-class Dice for the SIS (``labels`` the split's label maps) and the ``examples`` slices."""

    def __init__(self, names: list[str], ranges: np.ndarray, labels, dagan_compat: bool,
                 sis: "SISScorer | None", fid, example_idx: set[int]):
        self.names, self.ranges, self.labels, self.dagan_compat = names, ranges, labels, dagan_compat
        self.sis, self.fid, self.example_idx = sis, fid, example_idx
        self.values = {name: {m: [] for m in metrics.METRIC_NAMES} for name in names}
        self.seconds = {name: 0.0 for name in names}
        self.change_parts: dict[str, list[np.ndarray]] = {}
        self.dice = {name: [] for name in ("ground_truth", *names)}
        self.features = {name: [] for name in ("ground_truth", *names)}
        self.examples: dict[int, dict[str, np.ndarray]] = {}
        self.start = 0

    def reconstruct(self, recons: dict[str, Reconstructor], batch: KSpaceBatch) -> dict[str, np.ndarray]:
        """Each reconstructor's magnitudes ``[B, H, W, 1]`` of ``batch``, timed (the first batch after a warm-up
        call that traces the graph)."""
        outputs = {}
        for name, fn in recons.items():
            if self.start == 0 and getattr(fn, "warm_up", True):
                fn(batch)
            started = time.perf_counter()
            output = fn(batch)
            if isinstance(output, dict):  # a refined network: its image and what the refinement changed
                self.change_parts.setdefault(name, []).append(output["refinement"].numpy()[..., 0])
                output = output["image"]
            outputs[name] = output.numpy()
            self.seconds[name] += time.perf_counter() - started
        return outputs

    def add(self, batch: KSpaceBatch, outputs: dict[str, np.ndarray]) -> None:
        """Score ``outputs`` (name -> magnitudes) against the batch's target."""
        start, b = self.start, int(batch.target.shape[0])
        for name, image in outputs.items():
            values = metrics.compute_all(batch.target, image, self.ranges[start:start + b], self.dagan_compat)
            for m in metrics.METRIC_NAMES:
                self.values[name][m].append(values[m])
        if self.fid is not None:
            self.features["ground_truth"].append(self.fid(np.asarray(batch.target), cache=True))
            for name, image in outputs.items():
                self.features[name].append(self.fid(np.asarray(image)))
        if self.sis is not None:
            truth = np.asarray(self.labels[start:start + b])
            for name, image in (("ground_truth", batch.target), *outputs.items()):
                self.dice[name].append(metrics.dice_per_class(self.sis.segment(image), truth, self.sis.classes))
        for i in range(b):
            if start + i in self.example_idx:
                self.examples[start + i] = {"target": batch.target[i, ..., 0].numpy(),
                                            **{name: outputs[name][i, ..., 0] for name in self.names}}
        self.start += b

    @property
    def per_slice(self) -> dict[str, dict[str, np.ndarray]]:
        return {name: {m: np.concatenate(v) for m, v in d.items()} for name, d in self.values.items()}

    @property
    def changes(self) -> dict[str, np.ndarray]:
        """A refined network's ``[N, H, W]`` changes, by row name."""
        return {name: np.concatenate(parts) for name, parts in self.change_parts.items()}

    def result(self, subjects: np.ndarray) -> dict:
        """Per row: the metrics' summaries, ms per slice, and the refinement, FID and SIS entries that apply."""
        n = self.start
        result = {name: {**metrics.summary_json(values, subjects), "ms_per_slice": 1000 * self.seconds[name] / n}
                  for name, values in self.per_slice.items()}
        for name, change in self.changes.items():
            magnitude = np.abs(change)
            result[name]["refinement"] = {"mean_abs": float(magnitude.mean()), "max_abs": float(magnitude.max()),
                                          "meaning": "|λ·V(x)|, what the refinement changed, in image units"}
        if self.fid is not None:
            reference = np.concatenate(self.features["ground_truth"])
            for name in self.names:
                result[name]["fid"] = metrics.frechet_distance(np.concatenate(self.features[name]), reference)
        if self.sis is not None:
            result["sis"] = self.sis.scores({name: np.concatenate(d) for name, d in self.dice.items()}, result)
        return result


def strongest_baseline(result: dict, models=MODEL_ROWS) -> str | None:
    """The classical row (neither a model row of ``models`` nor zero-filled) with the highest mean PSNR."""
    baselines = {k: v["psnr"]["mean"] for k, v in result.items()
                 if isinstance(v, dict) and "psnr" in v and k not in models and k != "zero_filled"}
    return max(baselines, key=baselines.get) if baselines else None


def baseline_warnings(result: dict, models=MODEL_ROWS) -> list[str]:
    """One line per row of ``models`` that a classical baseline (not zero-filled) beats in mean PSNR."""
    best = strongest_baseline(result, models)
    if best is None:
        return []
    level = result[best]["psnr"]["mean"]
    return [f"warning: {best} reaches {level:.2f} dB here, above the {name} row's "
            f"{result[name]['psnr']['mean']:.2f} dB" for name in models
            if name in result and level > result[name]["psnr"]["mean"]]


def format_table(result: dict) -> str:
    """Plain-text table: one row per reconstruction, mean ± std per metric."""
    names = [k for k, v in result.items() if isinstance(v, dict) and "psnr" in v]
    width = max(12, *(len(name) for name in names))
    with_sis = "sis" in result
    with_fid = any("fid" in result[name] for name in names)
    lines = [f"{'':{width}s} {'NMSE':>20s} {'PSNR (dB)':>18s} {'SSIM':>18s} {'ms/slice':>9s}"
             + (f" {'SIS':>6s}" if with_sis else "") + (f" {'FID':>8s}" if with_fid else "")]
    for name in names:
        r = result[name]
        lines.append(f"{name:{width}s} {r['nmse']['mean']:>10.5f} ± {r['nmse']['std']:<7.5f} "
                     f"{r['psnr']['mean']:>8.3f} ± {r['psnr']['std']:<6.3f} "
                     f"{r['ssim']['mean']:>8.4f} ± {r['ssim']['std']:<6.4f} {r.get('ms_per_slice', 0):>9.2f}"
                     + (f" {r['sis']:>6.3f}" if with_sis else "") + (f" {r['fid']:>8.2f}" if with_fid else ""))
    lines.append(f"slices: {result['n_slices']}  subjects: {result['n_subjects']}  split: {result['split']}  "
                 f"mask: {result['mask']['kind']} (sampled fraction {result['mask']['sampled_fraction']:.4f})  "
                 f"regime: {result.get('regime', 'magnitude')}")
    if with_sis:
        reference = result["sis"]["ground_truth_dice"]
        lines.append(f"SIS: {result['sis']['definition']}; segmenter {result['sis']['segmenter']}, Dice on the "
                     f"ground truth {'n/a' if reference is None else f'{reference:.3f}'}")
    lines += result.get("warnings", [])
    return "\n".join(lines)


def _example_figure(examples: dict[int, dict[str, np.ndarray]], per_slice, prepared, title: str) -> np.ndarray:
    rows = []
    for index, images in sorted(examples.items()):
        recons = {name: image for name, image in images.items() if name != "target"}
        scores = {name: (float(per_slice[name]["psnr"][index]), float(per_slice[name]["ssim"][index]))
                  for name in recons}
        label = f"{prepared.subjects[index]}\nslice {prepared.slice_numbers[index]}"
        rows.append(FigureRow(label, images["target"], recons, scores))
    return comparison_figure(rows, title)


def _write_outputs(folder: Path, result, per_slice, prepared, ranges, examples, names, title):
    """metrics.json, per_slice.csv, examples.png and report.md into ``folder``."""
    (folder / "metrics.json").write_text(json.dumps(result, indent=2))
    with open(folder / "per_slice.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["index", "subject", "slice", "data_range"] +
                        [f"{n}_{m}" for n in names for m in metrics.METRIC_NAMES])
        for i in range(len(ranges)):
            writer.writerow([i, prepared.subjects[i], prepared.slice_numbers[i], f"{ranges[i]:.6g}"] +
                            [f"{per_slice[n][m][i]:.6g}" for n in names for m in metrics.METRIC_NAMES])
    write_png(folder / "examples.png", _example_figure(examples, per_slice, prepared, title))
    columns = " | ".join(["ground truth"] + [f"{n} | {n} |error| (fixed scale 0–{ERROR_MAX:g})" for n in names])
    (folder / "report.md").write_text(
        f"# {title}\n\n```\n{format_table(result)}\n```\n\n"
        f"Metric definitions: {result['metric_definitions']}; data range: {result['data_range']}; "
        f"k-space regime: {result['regime']}.\n"
        f"Values are mean ± std over all slices of the split; per-volume means are in metrics.json.\n"
        + "".join(f"\n{line}\n" for line in result["warnings"])
        + (f"\nClassical baselines: {result['reconstructor_settings']['baselines']}.\n"
           if "baselines" in result["reconstructor_settings"] else "")
        + "\n"
        f"![examples](examples.png)\n\nColumns: {columns}.\n"
        + "".join(f"\n![what the refinement of {n} changed](refinement_{n}.png)\n" for n in names
                  if "refinement" in result[n]))


def _write_change_figure(path: Path, change: np.ndarray, examples, name: str, prepared) -> None:
    """The example slices' refined images beside what the refinement changed."""
    rows = [(f"{prepared.subjects[i]}\nslice {prepared.slice_numbers[i]}", images[name], change[i])
            for i, images in sorted(examples.items())]
    write_png(path, change_figure(rows, f"{name}: what the refinement changed"))


def default_baselines(coils: int, regime: str, echo: Callable[[str], None]) -> list[str]:
    """The classical rows beside a model: the projection where valid (single-coil, magnitude regime) and,
    with sigpy installed, TV and ℓ1-wavelet (SENSE too on multi-coil data)."""
    import importlib.util

    names = ["zero-filled-dc"] if regime == "magnitude" and not coils else []
    if importlib.util.find_spec("sigpy") is None:
        echo("note: tv and wavelet baselines need sigpy (pip install 'dagan-tf[cs]'); not scored")
        return names
    return names + (["sense"] if coils else []) + ["tv", "wavelet"]


def evaluate_methods(data, spec: MaskSpec, out, *, split: str = "test", run_dir=None, dc: bool = False,
                     baselines: list[str] = (), no_baselines: bool = False, regime: str = "magnitude",
                     phase_seed: int = 0, lam: float | None = None, tune: bool = False, iterations: int = 100,
                     backend: str = "sigpy", calib_width: int | None = 24, dagan_compat: bool = False,
                     batch_size: int = 16, overwrite: bool = False, sis_run=None, sis_classes=None,
                     fid_weights=None, precision: str = "float32", echo: Callable[[str], None] = lambda _: None) -> dict:
    """What ``dagan-tf eval`` does: a run (``run_dir``, with ``dc``, computing in ``precision``) and classical
    ``baselines`` on ``split``.

    A run without explicit baselines gets :func:`default_baselines` (tuned weights) unless
    ``no_baselines``; ``dc`` adds the projection in the magnitude regime.  Multi-coil splits use
    ESPIRiT maps (``calib_width``) or, with ``calib_width=None``, their true maps.
    """
    from dagan_tf.baselines import build_baselines
    from dagan_tf.coils import estimated_maps

    prepared = load_split(data, split)
    if prepared.kspace is not None and regime == "phase":
        raise DaganError(f"{data} holds multi-coil k-space, simulated (or measured) with its own phase; "
                         "--regime applies to single-coil data")
    maps = None
    if prepared.kspace is not None and calib_width:
        maps = (f"ESPIRiT ({calib_width}² calibration centre)",
                estimated_maps(data, split, prepared.kspace, calib_width))
    names = list(baselines)
    if run_dir is not None and not baselines and not no_baselines:
        names, tune = default_baselines(prepared.coils, regime, echo), lam is None
    names += ["zero-filled-dc"] if dc and regime == "magnitude" and not prepared.coils else []
    recons, settings = build_baselines(names, data, spec, lam, iterations, tune, echo, calib_width, backend,
                                       regime, phase_seed)
    title = "evaluation of " + ", ".join(["zero-filled"] + [b for b in baselines if b != "zero-filled"])
    if run_dir is not None:
        from dagan_tf.contract import CASCADE
        from dagan_tf.inference import batch_reconstructor
        from dagan_tf.training.trained import load_run_network

        network, config = load_run_network(run_dir, inference=True, precision=precision)
        contract = recipes.network_contract(config)
        if contract.stage1:  # its stage-1 RecNet beside it, on the same slices
            recons["stage1+dc" if dc else "stage1"] = batch_reconstructor(network.recnet, CASCADE, dc)
            settings["stage1+dc" if dc else "stage1"] = {"precision": precision}
        recons["model+dc" if dc else "model"] = batch_reconstructor(network, contract, dc)
        settings["model+dc" if dc else "model"] = {"precision": precision}
        title = f"evaluation of {run_dir}" + (" with data consistency" if dc else "")
    if no_baselines:
        settings["baselines"] = "skipped (--no-baselines): no classical baseline beside the model"
    sis = None if sis_run is None else sis_scorer(sis_run, sis_classes)
    return evaluate(data, spec, out, split, recons, batch_size, dagan_compat, overwrite, title, settings, maps,
                    regime, phase_seed, sis, fid=fid_features(fid_weights))


def fid_features(weights):
    """The :class:`dagan_tf.models.fid.FIDFeatures` of ``weights`` (a .npz path), or None without."""
    if weights is None:
        return None
    from dagan_tf.models.fid import FIDFeatures

    return FIDFeatures(weights)
