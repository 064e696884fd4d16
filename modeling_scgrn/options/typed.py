"""Config dataclasses built from plain dicts (YAML files, `--set` overrides, Python calls): unknown keys refused,
values of the wrong type refused, strings such as "true" or "1e-3" converted."""

from __future__ import annotations

import dataclasses


def checked_dataclass(cls, values: dict, what: str):
    """`cls(**values)` for a config dataclass, refusing unknown keys and values of the wrong type (YAML and
    command-line strings such as "true" or "1e-3" are converted)."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} option(s) {unknown}; known options are {sorted(known)}.")
    return cls(**{name: _coerce(name, value, known[name].type, what) for name, value in values.items()})


def given_options(cls, namespace, what: str):
    """`cls` built from the fields of `cls` that a script's parsed `namespace` holds (a parser with
    `argument_default=argparse.SUPPRESS` leaves out what was not given, so `cls`'s own defaults apply)."""
    values = vars(namespace)
    return checked_dataclass(cls, {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}, what)


def _coerce(name: str, value, expected: str, what: str):
    if value is None and "None" in expected:
        return None
    base = expected.split("|")[0].strip()
    if base == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif base == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
    elif base == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif base == "str":
        if isinstance(value, str):
            return value
    elif base.startswith("list[str]"):
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
    raise ValueError(f"{what} option {name!r} expects {expected}, got {value!r} ({type(value).__name__}).")
