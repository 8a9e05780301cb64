"""``dagan-tf compare``: trained runs, exports and classical baselines on the same slices, masks and metrics.

Every reconstructor sees the same evaluation batches (:func:`dagan_tf.evaluate.evaluate`, so each
row equals what ``eval`` gives for it alone).  Reconstructions are cached per reconstructor, keyed
by a checksum of the model's files (or the baseline's settings), the prepared data's manifest, the
split, the mask and the regime, so a comparison grows cheaply and a changed run is recomputed.

Outputs (written atomically into ``out``), one sub-folder per regime (``phase/``, ``magnitude/``)::

    comparison.md / .csv / .json   per method: NMSE, PSNR, SSIM (mean ± std over slices and over
                                   subjects), SIS and FID when asked, ms/slice on this machine, parameters,
                                   the training CPU-minutes of each run (its history.csv);
                                   paired differences against the reference
    comparison.png                 the median-PSNR slice (by the reference) of every subject, every
                                   method in columns with error maps on one scale
    per_subject_psnr.png           mean PSNR per subject and method
    metrics.json, per_slice.csv, report.md, examples.png    as ``eval`` writes them

and, at the top, ``learning_curves.csv`` / ``.png`` for the runs whose ``history.csv`` records training
time: validation PSNR against CPU-minutes, so a reader sees whether a longer run would close a gap.
Network rows carry their gain over the strongest classical row of the regime (PSNR and SSIM), and a
warning line is printed where a classical baseline scores above a network.

Paired statistics use the **subject** as the unit (slices of one subject are not independent):
per-subject mean differences, a 95 % bootstrap interval over subjects and the Wilcoxon
signed-rank p-value over subjects; the same over slices is listed for reference.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

from dagan_tf import metrics
from dagan_tf.data.batches import KSpaceBatch, Reconstructor
from dagan_tf.data.prepare import check_prepared, load_split
from dagan_tf.errors import DaganError
from dagan_tf.evaluate import evaluate, fid_features, sis_scorer, strongest_baseline, zero_filled
from dagan_tf.figures import FigureRow, comparison_figure, line_plot, write_png
from dagan_tf.masks import MaskSpec
from dagan_tf.outputs import atomic_output_dir, check_new_output, write_cache

REGIMES = ("phase", "magnitude")
BOOTSTRAP_SAMPLES = 10000


def default_cache_dir() -> Path:
    """``$DAGAN_TF_CACHE`` or ``$XDG_CACHE_HOME/dagan-tf`` (``~/.cache/dagan-tf``), sub-folder ``compare``."""
    root = os.environ.get("DAGAN_TF_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dagan-tf"
    return Path(root) / "compare"


def _files_checksum(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Model:
    """A run or export to compare: its name in the tables, size, mask (runs), parameters, checksum and the
    precision it computes in (a run's: ``--precision``; an export's: the one it was exported with)."""

    path: Path
    name: str
    size: int
    mask: MaskSpec | None
    parameters: int
    checksum: str
    batch_reconstructor: Reconstructor = field(repr=False)
    precision: str = "float32"


def load_models(paths: list[str], dc: bool, size: int, data,
                echo: Callable[[str], None] = lambda _: None, precision: str = "float32") -> list[Model]:
    """Each run folder (best weights, else the newest checkpoint; computing in ``precision``, ``float32`` or
    ``bfloat16``) or export of ``paths``; each must reconstruct ``size``² images (the slices of ``data``);
    ``echo`` is told of an export built for another CPU's kernels."""
    from dagan_tf import recipes

    def check_size(path: Path, model_size: int) -> None:
        if model_size != size:
            raise DaganError(f"{path} reconstructs {model_size}² images but {data} holds {size}² slices; "
                             "compare models on data of their own size")

    from dagan_tf.inference import batch_reconstructor
    from dagan_tf.models.layers import inference_copy
    from dagan_tf.training.trained import load_run_network
    from dagan_tf.training.run import mask_spec

    models, names = [], set()
    for text in paths:
        path = Path(text)
        name = path.name if path.name not in names else str(path)
        names.add(name)
        if (path / "saved_model.pb").is_file():
            from dagan_tf.predict import load_model

            export = load_model(path)  # signatures checked; reconstruct(kspace0, mask, dc) -> [N, S, S, 1 or 2]
            check_size(path, export.size)
            if export.note is not None:
                echo(export.note)  # its ms per slice are not this CPU's best

            def reconstruct(batch, export=export, path=path):
                if batch.maps is not None:
                    raise DaganError(f"the export {path} takes single-coil k-space")
                return export.reconstruct(batch.kspace, batch.mask, dc)[..., :1]

            variables = str(path / "variables" / "variables")
            parameters = sum(int(np.prod(shape)) for name, shape in tf.train.list_variables(variables)
                             if not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH"))
            files = [path / "saved_model.pb", *sorted((path / "variables").iterdir())]
            models.append(Model(path, name, export.size, None, parameters, _files_checksum(files), reconstruct,
                                export.precision))
        elif (path / "config.yaml").is_file():
            check_size(path, recipes.load_config_file(path / "config.yaml")["model"]["image_size"])
            network, config = load_run_network(path, precision=precision)
            weights = [path / "best.weights.h5"] if (path / "best.weights.h5").is_file() \
                else sorted((path / "checkpoints").glob("ckpt-*"))
            parameters = sum(int(np.prod(w.shape)) for w in network.weights)
            models.append(Model(path, name, config["model"]["image_size"], mask_spec(config), parameters,
                                _files_checksum([path / "config.yaml", *weights]),
                                batch_reconstructor(inference_copy(network), recipes.network_contract(config), dc),
                                precision))
        else:
            raise DaganError(f"{path} is neither an export (saved_model.pb) nor a run folder (config.yaml)")
    return models


def common_mask(models: list[Model], override: MaskSpec | None) -> MaskSpec:
    """``override``, else the runs' one mask (an error when they differ, or when only exports are given)."""
    if override is not None:
        return override
    specs = {m.name: m.mask for m in models if m.mask is not None}
    if not specs:
        raise DaganError("exports carry no mask: pass --mask (and --ratio) for the comparison")
    first = next(iter(specs.values()))
    for name, spec in specs.items():
        if spec != first:
            raise DaganError(f"the runs use different masks ({next(iter(specs))}: {first.describe()}; "
                             f"{name}: {spec.describe()}); pass --mask to compare all on one")
    return first


class CachedReconstructor:
    """A batch reconstructor whose outputs for a whole split are kept (``outputs [N, H, W]``) and cached on
    disk under ``key``; a cached one is served without running.  Batches must carry ``index``."""

    def __init__(self, fn, key: str, cache_dir: Path | None, n: int, shape: tuple[int, int]):
        self.fn, self.key, self.cache_dir = fn, key, cache_dir
        self.outputs = np.zeros((n, *shape), np.float32)
        self.seconds = 0.0
        self.cached_ms = None
        path = self.path
        if path is not None and path.is_file() and path.with_suffix(".json").is_file():
            try:
                stored = np.load(path, allow_pickle=False)
                meta = json.loads(path.with_suffix(".json").read_text())
                if stored.shape == self.outputs.shape:
                    self.outputs, self.cached_ms = stored, float(meta["ms_per_slice"])
            except (OSError, ValueError, KeyError):
                pass  # a damaged cache entry is recomputed
        self.warm_up = self.cached_ms is None

    @property
    def path(self) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{self.key}.npy"

    def __call__(self, batch: KSpaceBatch) -> tf.Tensor:
        index = batch.index.numpy()
        if self.cached_ms is not None:
            return tf.constant(self.outputs[index][..., None])
        out = self.fn(batch)
        image = out["image"] if isinstance(out, dict) else out
        self.outputs[index] = image.numpy()[..., 0]
        return out

    def save(self, ms_per_slice: float) -> None:
        """Store the outputs (best effort: a cache that cannot be written is skipped)."""
        if self.path is None or self.cached_ms is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_cache(self.path, lambda tmp: np.save(tmp, self.outputs))
        write_cache(self.path.with_suffix(".json"),
                    lambda tmp: Path(tmp).write_text(json.dumps({"ms_per_slice": ms_per_slice})))


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def bootstrap_interval(differences: np.ndarray, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0) -> list[float]:
    """95 % percentile bootstrap interval of the mean of ``differences`` (numpy, seeded)."""
    rng = np.random.default_rng(seed)
    means = rng.choice(differences, (samples, len(differences)), replace=True).mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def paired_statistics(per_slice: dict[str, np.ndarray], subjects: np.ndarray, reference: str) -> dict:
    """PSNR and SSIM differences of every method against ``reference``: over subjects (the test's unit) and
    over slices; mean, 95 % bootstrap interval and Wilcoxon signed-rank p-value (scipy)."""
    from scipy.stats import wilcoxon

    out = {}
    order = list(dict.fromkeys(subjects))
    for name, values in per_slice.items():
        if name == reference:
            continue
        out[name] = {}
        for metric in ("psnr", "ssim"):
            slice_diff = values[metric] - per_slice[reference][metric]
            subject_diff = np.array([slice_diff[subjects == s].mean() for s in order])
            entry = {}
            for unit, diff in (("subjects", subject_diff), ("slices", slice_diff)):
                p = float(wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
                entry[unit] = {"n": int(len(diff)), "mean_difference": float(diff.mean()),
                               "ci95": bootstrap_interval(diff), "wilcoxon_p": p}
            out[name][metric] = entry
    return out


def _read_per_slice(folder: Path, names: list[str]) -> dict[str, dict[str, np.ndarray]]:
    with open(folder / "per_slice.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {n: {m: np.array([float(r[f"{n}_{m}"]) for r in rows]) for m in metrics.METRIC_NAMES} for n in names}


def median_slices(psnr: np.ndarray, subjects: np.ndarray) -> list[int]:
    """Per subject (in order of appearance), the slice whose PSNR is the median of that subject's."""
    chosen = []
    for subject in dict.fromkeys(subjects):
        idx = np.flatnonzero(subjects == subject)
        chosen.append(int(idx[np.argsort(psnr[idx])[len(idx) // 2]]))
    return chosen


def compare(models: list[str], data, out, baselines: list[str] = (), split: str = "test",
            mask: MaskSpec | None = None, dc: bool = False, regime: str = "phase", reference: str | None = None,
            sis_run=None, cache_dir: Path | None = None, phase_seed: int = 0, batch_size: int = 16,
            fid_weights=None, overwrite: bool = False, echo: Callable[[str], None] = lambda _: None,
            precision: str = "float32") -> dict:
    """Compare ``models`` (run or export folders) and classical ``baselines`` on ``split`` of ``data``
    (module doc); ``regime`` is ``phase`` (default), ``magnitude`` or ``both``; run folders compute in
    ``precision`` (``float32`` or ``bfloat16``).  Returns the summary."""
    check_new_output(out, overwrite)
    manifest = check_prepared(data)
    prepared = load_split(data, split)
    if prepared.coils:
        raise DaganError("compare runs on single-coil prepared data (simulated k-space); "
                         "use 'dagan-tf eval' for multi-coil splits")
    size = prepared.images.shape[1]
    loaded = load_models(list(models), dc, size, data, echo, precision)
    spec = common_mask(loaded, mask)
    spec.validate()
    reference = reference or (loaded[0].name if loaded else "zero_filled")
    regimes = list(REGIMES) if regime == "both" else [regime]
    data_key = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    sis = None if sis_run is None else sis_scorer(sis_run)
    fid = fid_features(fid_weights)
    summary = {}
    curves = learning_curves(loaded)
    with atomic_output_dir(out, overwrite) as tmp:
        for reg in regimes:
            folder = tmp / reg
            recons, settings = _reconstructors(loaded, baselines, data, spec, reg, phase_seed, dc, cache_dir,
                                               [data_key, split, asdict(spec), reg, phase_seed], prepared, echo)
            if reference not in recons:
                raise DaganError(f"--reference {reference!r} is not one of {', '.join(recons)}")
            echo(f"{reg} regime: {', '.join(recons)} on {len(prepared.images)} {split} slices"
                 + (f" ({sum(r.cached_ms is not None for r in recons.values())} from the cache)" if cache_dir else ""))
            started = time.perf_counter()
            result = evaluate(data, spec, folder, split, recons, batch_size, False, False,
                              f"comparison, {reg} regime", settings, regime=reg, phase_seed=phase_seed, sis=sis,
                              fid=fid, models=[m.name for m in loaded])
            for line in result["warnings"]:
                echo(line)
            for name, fn in recons.items():
                if fn.cached_ms is not None:
                    result[name]["ms_per_slice"] = fn.cached_ms
                fn.save(result[name]["ms_per_slice"])
            table, stats = _write_regime(folder, result, recons, loaded, curves, prepared, reference, reg, spec, split)
            summary[reg] = {"table": table, "statistics": stats, "seconds": time.perf_counter() - started}
        if curves:
            _write_learning_curves(tmp, curves)
            echo(f"learning curves of {', '.join(curves)}: {Path(out) / 'learning_curves.png'}")
    return summary


def _reconstructors(loaded: list[Model], baselines: list[str], data, spec: MaskSpec, regime: str, phase_seed: int,
                    dc: bool, cache_dir: Path | None, common: list, prepared, echo) -> tuple[dict, dict]:
    """``(name -> CachedReconstructor, baseline settings)`` of one regime: zero-filled, the ``loaded`` models and
    the tuned ``baselines``; ``common`` keys the cache (data, split, mask, regime, phase seed)."""
    from dagan_tf.baselines import build_baselines

    n, size = len(prepared.images), prepared.images.shape[1:]
    recons = {"zero_filled": CachedReconstructor(zero_filled, "zero_filled", None, n, size)}
    for m in loaded:
        key = _key(m.checksum, *common, dc, *([m.precision] if m.precision != "float32" else []))
        recons[m.name] = CachedReconstructor(m.batch_reconstructor, key, cache_dir, n, size)
    # in the magnitude regime the projection (no network) is valid and often the strongest: always shown
    baseline_recons, settings = build_baselines(list(baselines) + (["zero-filled-dc"] if regime == "magnitude" else []),
                                                data, spec, tune=True, echo=echo, regime=regime, phase_seed=phase_seed)
    for name, fn in baseline_recons.items():
        # a baseline does not depend on --dc: one cache entry serves comparisons with and without it
        recons[name] = CachedReconstructor(fn, _key(name, settings, *common, False), cache_dir, n, size)
    return recons, settings


def _write_regime(folder: Path, result: dict, recons: dict, loaded: list[Model], curves: dict, prepared,
                  reference: str, regime: str, spec: MaskSpec, split: str) -> tuple[list[dict], dict]:
    """The comparison table and paired statistics of one regime's evaluation, written with its figures."""
    names = list(recons)
    per_slice = _read_per_slice(folder, names)
    stats = paired_statistics(per_slice, prepared.subjects, reference)
    trained = {name: c["cpu_minutes"][-1] for name, c in curves.items()}
    table = _comparison_table(result, names, stats, {m.name: m.parameters for m in loaded}, trained, reference,
                              {m.name: m.precision for m in loaded})
    _write_comparison(folder, table, result, stats, reference, regime, spec, split)
    _comparison_figures(folder, prepared, recons, per_slice, reference, names)
    return table, stats


def _comparison_table(result: dict, names: list[str], stats: dict, params: dict, trained: dict, reference: str,
                      models: dict[str, str]) -> list[dict]:
    """One row per method; network rows (``models``: name -> compute precision) also get their gain over the
    strongest classical row and (``trained``: name -> CPU-minutes, from the run's history) the training budget
    they had."""
    best = strongest_baseline(result, list(models))
    rows = []
    for name in names:
        r = result[name]
        row = {"method": name, "parameters": params.get(name), "training_cpu_minutes": trained.get(name),
               "precision": models.get(name)}
        for m in metrics.METRIC_NAMES:  # per_volume: mean ± std over the subjects' means
            row.update({f"{m}_mean": r[m]["mean"], f"{m}_std": r[m]["std"],
                        f"{m}_subject_mean": r[m]["per_volume"]["mean"], f"{m}_subject_std": r[m]["per_volume"]["std"]})
        row["sis"], row["fid"] = r.get("sis"), r.get("fid")
        row["ms_per_slice"] = r["ms_per_slice"]
        s = stats.get(name, {}).get("psnr", {}).get("subjects")
        row.update({"psnr_difference": None if s is None else s["mean_difference"],
                    "psnr_difference_ci95": None if s is None else s["ci95"],
                    "wilcoxon_p_subjects": None if s is None else s["wilcoxon_p"]})
        gain = name in models and best is not None
        row.update({"strongest_classical": best if gain else None,
                    "psnr_gain_over_classical": r["psnr"]["mean"] - result[best]["psnr"]["mean"] if gain else None,
                    "ssim_gain_over_classical": r["ssim"]["mean"] - result[best]["ssim"]["mean"] if gain else None})
        rows.append(row)
    return rows


def _write_comparison(folder: Path, table, result, stats, reference, regime, spec, split) -> None:
    keys = list(table[0])
    with open(folder / "comparison.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, keys)
        writer.writeheader()
        writer.writerows(table)
    (folder / "comparison.json").write_text(json.dumps(
        {"regime": regime, "split": split, "mask": result["mask"], "reference": reference, "table": table,
         "paired_statistics": stats, "statistics_unit": "subject", "warnings": result["warnings"]}, indent=2))
    with_sis = any(row["sis"] is not None for row in table)
    with_fid = any(row["fid"] is not None for row in table)
    lines = [f"# Comparison on the {split} split, {regime} regime",
             "",
             f"Mask {spec.kind} (sampled fraction {result['mask']['sampled_fraction']:.4f}), "
             f"{result['n_slices']} slices of {result['n_subjects']} subjects; data range: {result['data_range']}.",
             "",
             "| method | PSNR dB (slices) | PSNR dB (subjects) | SSIM (slices) | NMSE (slices) |"
             + (" SIS |" if with_sis else "") + (" FID |" if with_fid else "")
             + f" ΔPSNR vs {reference} [95 % CI], p | ms/slice | parameters | training CPU-min |",
             "|---|---|---|---|---|" + ("---|" if with_sis else "") + ("---|" if with_fid else "") + "---|---|---|---|"]
    for row in table:
        diff = "reference" if row["method"] == reference else (
            f"{row['psnr_difference']:+.2f} [{row['psnr_difference_ci95'][0]:+.2f}, "
            f"{row['psnr_difference_ci95'][1]:+.2f}], p = {row['wilcoxon_p_subjects']:.3g}"
            if row["psnr_difference"] is not None else "")
        lines.append(f"| {row['method']} | {row['psnr_mean']:.2f} ± {row['psnr_std']:.2f} | "
                     f"{row['psnr_subject_mean']:.2f} ± {row['psnr_subject_std']:.2f} | "
                     f"{row['ssim_mean']:.4f} ± {row['ssim_std']:.4f} | {row['nmse_mean']:.5f} | "
                     + (f"{row['sis']:.3f} | " if with_sis else "") + (f"{row['fid']:.2f} | " if with_fid else "")
                     + f"{diff} | {row['ms_per_slice']:.1f}"
                     + (" (bf16)" if row["precision"] == "bfloat16" else "") + " | "
                     + (f"{row['parameters']:,}" if row["parameters"] is not None else "–") + " | "
                     + (f"{row['training_cpu_minutes']:.1f}" if row["training_cpu_minutes"] is not None else "–")
                     + " |")
    lines += ["", "Networks compute in float32 unless marked (bf16): bfloat16 compute, float32 data consistency.",
              "", "Paired statistics use the subject as the unit: slices of one subject are not independent, "
              "so per-subject mean differences are bootstrapped (95 % percentile interval, "
              f"{BOOTSTRAP_SAMPLES} resamples) and tested with the Wilcoxon signed-rank test (scipy); with few "
              "subjects the smallest attainable p is large (4 subjects: 0.125). Slice-level statistics are in "
              "comparison.json.", ""]
    gains = [row for row in table if row["strongest_classical"] is not None]
    if gains:
        best = gains[0]["strongest_classical"]
        lines += [f"Strongest classical baseline here (by mean PSNR): **{best}**. Each network's gain over it: "
                  + "; ".join(f"{row['method']} {row['psnr_gain_over_classical']:+.2f} dB PSNR, "
                              f"{row['ssim_gain_over_classical']:+.4f} SSIM" for row in gains) + ".", ""]
    lines += [f"{line}" for line in result["warnings"]]
    lines += ["", "![median-PSNR slice of every subject](comparison.png)", "",
              "![per-subject PSNR](per_subject_psnr.png)", ""]
    (folder / "comparison.md").write_text("\n".join(lines))


def _comparison_figures(folder: Path, prepared, recons, per_slice, reference: str, names: list[str]) -> None:
    """comparison.png (median-PSNR slice of each subject by the reference) and per_subject_psnr.png."""
    chosen = median_slices(per_slice[reference]["psnr"], prepared.subjects)
    rows = []
    for i in chosen:
        shown = {n: recons[n].outputs[i] for n in names}
        scores = {n: (float(per_slice[n]["psnr"][i]), float(per_slice[n]["ssim"][i])) for n in shown}
        rows.append(FigureRow(f"{prepared.subjects[i]}\nslice {prepared.slice_numbers[i]}",
                              np.asarray(prepared.images[i]), shown, scores))
    write_png(folder / "comparison.png", comparison_figure(rows, f"median-PSNR slice per subject (by {reference})"))
    write_png(folder / "per_subject_psnr.png", _per_subject_plot(per_slice, prepared.subjects, names))


def _per_subject_plot(per_slice, subjects, names) -> np.ndarray:
    order = list(dict.fromkeys(subjects))
    series = {name: (range(len(order)), [per_slice[name]["psnr"][subjects == s].mean() for s in order])
              for name in names}
    return line_plot(series, "subject", "mean PSNR (dB)", [s[-14:] for s in order], width=1.2 + 0.9 * len(order))


def learning_curves(models: list[Model]) -> dict[str, dict[str, list[float]]]:
    """Per run with a ``history.csv`` that has them: ``{"epoch", "cpu_minutes", "wall_minutes", "val_psnr"}``
    lists (validation PSNR on the run's own validation split and regime, against the training time)."""
    from dagan_tf.training.callbacks import read_history

    keys = ("epoch", "cpu_minutes", "wall_minutes", "val_psnr")
    curves = {}
    for model in models:
        rows = read_history(model.path / "history.csv")
        if rows and all(key in rows[0] for key in keys):
            curves[model.name] = {key: [float(row[key]) for row in rows] for key in keys}
    return curves


def _write_learning_curves(folder: Path, curves: dict) -> None:
    """learning_curves.csv and .png: validation PSNR of every run against its CPU-minutes."""
    with open(folder / "learning_curves.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["run", "epoch", "cpu_minutes", "wall_minutes", "val_psnr"])
        for name, c in curves.items():
            writer.writerows([name, *values] for values in zip(c["epoch"], c["cpu_minutes"], c["wall_minutes"],
                                                               c["val_psnr"]))
    series = {name: (c["cpu_minutes"], c["val_psnr"]) for name, c in curves.items()}
    write_png(folder / "learning_curves.png",
              line_plot(series, "training CPU-minutes (process time, validation included)", "validation PSNR (dB)"))
