"""Declared schemas for nested configuration dicts (recipes), checked once before any work.

A schema is ``{section: {key: Field}}``.  :func:`validate` checks a config
against it (required sections and keys, no unknown keys, types, ranges and
choices) and raises :class:`~dagan_tf.errors.DaganError` naming the first bad
key (``train.batch_size``) and what is allowed.  :func:`render` writes a config
as YAML with each key's help as a comment.  Pure Python: no TensorFlow.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import yaml

from dagan_tf.errors import DaganError

KINDS = ("int", "float", "bool", "str", "choice")


@dataclass(frozen=True)
class Field:
    """One config value: its kind, allowed range or choices, and help text.

    ``low``/``high`` bound numbers (``low_open``/``high_open`` exclude the bound);
    ``multiple_of`` constrains integers; ``check`` is an extra test of a string
    that returns an error text or ``None``.
    """

    kind: str
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    nullable: bool = False
    multiple_of: int | None = None
    check: Callable[[str], str | None] | None = None
    default: Any = None  # taken when the key is missing (recipes older than the key)

    def describe(self) -> str:
        """What is allowed, e.g. ``an integer >= 1`` or ``one of ratio, mse``."""
        if self.kind == "choice":
            text = f"one of {', '.join(map(str, self.choices))}"
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind == "str":
            text = "a string"
        else:
            text = "an integer" if self.kind == "int" else "a number"
            if self.low is not None and self.high is not None:
                text += f" in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
            elif self.low is not None:
                text += f" {'>' if self.low_open else '>='} {self.low:g}"
            elif self.high is not None:
                text += f" {'<' if self.high_open else '<='} {self.high:g}"
            if self.multiple_of:
                text += f", a multiple of {self.multiple_of}"
        return f"null or {text}" if self.nullable else text

    def validate(self, key: str, value: Any) -> Any:
        """``value`` converted to the field's type (ints accepted as floats); raises on anything else."""
        def bad(reason: str = "") -> DaganError:
            got = f"got {value!r}" if not isinstance(value, (dict, list)) else f"got a {type(value).__name__}"
            return DaganError(f"recipe key {key} must be {self.describe()}, {got}{reason}")

        if value is None:
            if self.nullable:
                return None
            raise bad()
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise bad()
            return value
        if self.kind in ("str", "choice"):
            if not isinstance(value, str) or (self.kind == "choice" and value not in self.choices):
                raise bad()
            problem = self.check(value) if self.check else None
            if problem:
                raise DaganError(f"recipe key {key}: {problem}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        if self.kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise bad()
            value = int(value)
        else:
            value = float(value)
            if not math.isfinite(value):
                raise bad()
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            raise bad()
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            raise bad()
        if self.multiple_of and value % self.multiple_of:
            raise bad()
        return value


Schema = dict  # {section: {key: Field}}; a top-level Field stands for a scalar key


def validate(config: Any, schema: Schema, source: str = "recipe") -> dict:
    """A validated copy of ``config`` (values converted); raises naming the first bad key."""
    if not isinstance(config, dict):
        raise DaganError(f"{source} must be a mapping of sections, got a {type(config).__name__}")
    unknown = [k for k in config if k not in schema]
    if unknown:
        raise DaganError(f"{source}: unknown key {unknown[0]!r}; valid top-level keys: {', '.join(schema)}")
    out = {}
    for name, spec in schema.items():
        if isinstance(spec, Field):
            if name not in config:
                if not spec.nullable and spec.default is None:
                    raise DaganError(f"{source}: required key {name!r} is missing")
                out[name] = spec.default
            else:
                out[name] = spec.validate(name, config[name])
            continue
        section = config.get(name)
        if not isinstance(section, dict):
            what = "is missing" if name not in config else f"must be a mapping, got {section!r}"
            raise DaganError(f"{source}: section {name!r} {what}")
        extra = [k for k in section if k not in spec]
        if extra:
            raise DaganError(f"{source}: unknown key {name}.{extra[0]}; valid keys of {name}: {', '.join(spec)}")
        out[name] = {}
        for key, field in spec.items():
            if key not in section:
                if field.nullable or field.default is not None:
                    out[name][key] = field.default
                    continue
                raise DaganError(f"{source}: required key {name}.{key} is missing")
            out[name][key] = field.validate(f"{name}.{key}", section[key])
    return out


def leaf_keys(schema: Schema) -> list[str]:
    """``section.key`` names of every field (top-level scalars by their own name)."""
    return [name if isinstance(spec, Field) else f"{name}.{key}"
            for name, spec in schema.items() for key in ([None] if isinstance(spec, Field) else spec)]


def field_of(schema: Schema, key: str) -> Field | None:
    section, _, leaf = key.partition(".")
    spec = schema.get(section)
    if isinstance(spec, Field):
        return spec if not leaf else None
    return spec.get(leaf) if spec is not None else None


def render(config: dict, schema: Schema, header: str = "") -> str:
    """``config`` as YAML with every key's help (and what is allowed) as a trailing comment."""
    def scalar(value) -> str:
        return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip().removesuffix("\n...")

    lines = [f"# {line}" for line in header.splitlines()]
    for name, spec in schema.items():
        if isinstance(spec, Field):
            lines.append(f"{name}: {scalar(config.get(name))}  # {spec.help}")
            continue
        lines.append(f"{name}:")
        for key, field in spec.items():
            lines.append(f"  {key}: {scalar(config[name].get(key))}  # {field.help} ({field.describe()})")
    return "\n".join(lines) + "\n"
