"""Recipes: one YAML file per paper setup (``configs/recipes/*.yaml``), overridable with ``key=value``."""
from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path

import yaml

from dagan_tf.errors import DaganError


def recipe_dir():
    """``configs/recipes``: installed as ``dagan_tf.configs``, or beside the package in a source checkout."""
    try:
        return resources.files("dagan_tf.configs") / "recipes"
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "configs" / "recipes"


def recipe_names() -> list[str]:
    return sorted(p.name[:-5] for p in recipe_dir().iterdir() if p.name.endswith(".yaml"))


def load_recipe(name: str) -> dict:
    """The recipe ``name`` (e.g. ``ppgr``) as a nested dict."""
    names = recipe_names()
    if name not in names:
        raise DaganError(f"unknown recipe {name!r}; valid recipes: {', '.join(names)}")
    text = (recipe_dir() / f"{name}.yaml").read_text()
    return yaml.safe_load(text)


def load_config_file(path: str | Path) -> dict:
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DaganError(f"cannot read config {path}: {exc}") from None
    if not isinstance(config, dict):
        raise DaganError(f"{path} is not a recipe mapping")
    return config


def _leaf_keys(config: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in config.items():
        keys += _leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return keys


def apply_overrides(config: dict, overrides: list[str]) -> dict:
    """Return a copy of ``config`` with ``section.key=value`` overrides (values parsed as YAML scalars)."""
    config = copy.deepcopy(config)
    valid = _leaf_keys(config)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise DaganError(f"--set expects key=value, got {item!r}")
        if key not in valid:
            raise DaganError(f"unknown --set key {key!r}; valid keys: {', '.join(valid)}")
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        try:
            node[leaf] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise DaganError(f"--set {key}: cannot parse value {text!r}") from None
    return config


def dump(config: dict) -> str:
    return yaml.safe_dump(config, sort_keys=False)
