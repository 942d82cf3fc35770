"""One settings layer for every config a user writes: typed fields checked by pydantic.

A config (``TrainConfig``, ``DataConfig``) is a :class:`Settings` model: each field
declares its type, allowed values and help text once, and the command line takes its
``--help`` from there. Settings come in layers: the field defaults, then a YAML file or
a preset shipped in the package (``pneumoscope/presets/KIND/NAME.yaml``, found with
importlib.resources, so an editable checkout and an installed wheel find them alike),
then the flags actually given. A wrong key, type or value is one :class:`UserError`
line that names the key, and the file when the value came from one. The resolved
settings are written back as YAML (``to_yaml``), and that file loads again as a config.

This module imports neither torch nor numpy, so ``--help`` stays instant.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from importlib.resources import files
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError
from pydantic_core import PydanticUndefined

from pneumoscope.core.errors import UserError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # Python 3.11+; annotations only


class SettingError(ValueError):
    """A validator's complaint that is a whole sentence, about setting ``key``.

    A plain ValueError is a predicate ("must be at least 1, got 0") that the message
    completes with the flag or the file's key; this one is said as it is.
    """

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


def _not_bool(value: Any) -> Any:
    """YAML reads yes/no/on/off as booleans; a number field never takes one."""
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {value!r}")
    return value


def _as_text(value: Any) -> Any:
    """Paths (and numbers, as in ``precision: 32``) stand for their text."""
    if isinstance(value, bool):
        return value
    return str(value) if isinstance(value, PathLike | int | float) else value


class InvalidSettings(UserError):
    """Settings that do not validate, said in one line (no file named: see Settings.build)."""

    def __init__(self, message: str, errors: ValidationError | None = None) -> None:
        super().__init__(message)
        self.errors = errors


Whole = Annotated[int, BeforeValidator(_not_bool)]
Number = Annotated[float, BeforeValidator(_not_bool)]
Text = Annotated[str, BeforeValidator(_as_text)]


class Settings(BaseModel):
    """A config: typed fields, no unknown keys, mistakes as one-line UserErrors."""

    # no unknown keys; the validator is built on first use, so --help does not wait for it
    model_config = ConfigDict(extra="forbid", defer_build=True)

    # field -> flag name, where they differ (DataConfig.sources is given as --source)
    flag_names: ClassVar[dict[str, str]] = {}
    # add " Default: X." to a field's --help (not for defaults None and False)
    default_in_help: ClassVar[bool] = False

    def __init__(self, **values: Any) -> None:
        """Build from keyword arguments; pydantic calls this for ``model_validate`` too."""
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise InvalidSettings(explain(exc, type(self)), exc) from None

    @classmethod
    def build(
        cls, values: Mapping[str, Any], where: str | None = None, from_file: Iterable[str] = ()
    ):
        """Validate ``values``; ``from_file`` are the keys read from ``where`` (a file),
        which an error message then names instead of the flag."""
        try:
            return cls.model_validate(dict(values))
        except InvalidSettings as exc:
            if exc.errors is None:
                raise
            raise UserError(explain(exc.errors, cls, where, set(from_file))) from None

    @classmethod
    def layered(cls, file_values: Mapping[str, Any], flags: Mapping[str, Any], where: str | None):
        """Defaults < ``file_values`` (read from ``where``) < ``flags``."""
        from_file = set(file_values) - set(flags)
        return cls.build({**file_values, **flags}, where, from_file)

    def validate(self) -> None:  # type: ignore[override]  (BaseModel's is deprecated)
        """Check again, after attributes were set one by one (values are normalised)."""
        checked = type(self).build(self.model_dump())
        for name in type(self).model_fields:
            setattr(self, name, getattr(checked, name))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def to_yaml(self) -> str:
        """The resolved settings, loadable again as a config file."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def flag(cls, name: str) -> str:
        return "--" + cls.flag_names.get(name, name).replace("_", "-")

    @classmethod
    def flag_help(cls, name: str) -> str:
        """The field's description, as the command line's --help shows it."""
        info = cls.model_fields[name]
        text = info.description or ""
        default = info.default
        shown = default is not PydanticUndefined and default is not None and default is not False
        if cls.default_in_help and shown:
            text += f" Default: {default}."
        return text


# --- one-line messages ----------------------------------------------------------------------


def explain(
    exc: ValidationError, cls: type[Settings], where: str | None = None, from_file=frozenset()
) -> str:
    """The first problem of ``exc`` as one line: what is wrong, with which key, where."""
    errors = exc.errors(include_url=False)
    missing = [str(e["loc"][0]) for e in errors if e["type"] == "missing" and e["loc"]]
    if missing:
        flags = " and ".join(cls.flag(k) for k in missing)
        return f"{flags} missing: give it on the command line" + (
            f" or in {where}" if where else ""
        )
    err = errors[0]
    key = str(err["loc"][0]) if err["loc"] else ""
    cause = (err.get("ctx") or {}).get("error")
    if isinstance(cause, SettingError) and cause.key:
        key = cause.key
    if err["type"] == "extra_forbidden":
        known = sorted(cls.model_fields)
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        return f"unknown setting '{key}' in {where or 'the settings'}{hint}"
    in_file = where is not None and key in from_file
    if isinstance(cause, SettingError):
        return str(cause) + (f" (in {where})" if in_file else "")
    subject = f"'{key}' in {where}" if in_file else cls.flag(key)
    return f"{subject} {_problem(err, cause)}"


def _problem(err: Mapping[str, Any], cause: object) -> str:
    """What is wrong with the value, as a predicate: 'must be ..., got X'."""
    kind, value = err["type"], err.get("input")
    if isinstance(cause, ValueError):
        return str(cause)
    if kind == "literal_error":
        choices = [c.strip("'") for c in re.split(r", | or ", err["ctx"]["expected"])]
        return f"must be one of {', '.join(choices)}, got {value!r}"
    if kind == "int_from_float":
        return f"must be a whole number, got {value!r}"
    for prefix, what in (
        ("int_", "a number"),
        ("float_", "a number"),
        ("bool_", "true or false"),
        ("dict_", "a mapping (key: value)"),
        ("list_", "a list"),
        ("string_", "text"),
    ):
        if kind.startswith(prefix):
            return f"must be {what}, got {value!r}"
    return f"is not valid ({err['msg']}), got {value!r}"


def did_you_mean(name: str, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


# --- files and presets ----------------------------------------------------------------------


def read_yaml(path: Path | Traversable) -> dict[str, Any]:
    """A YAML mapping of settings, keys with dashes or underscores (-> underscores)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path} is not valid YAML ({first})") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(
            f"{path} must hold a mapping of settings (key: value), not {type(raw).__name__}"
        )
    return {str(k).replace("-", "_"): v for k, v in raw.items()}


def preset_folder(kind: str) -> Traversable:
    """The presets shipped in the package: ``pneumoscope/presets/<kind>/`` (train, data)."""
    return files("pneumoscope") / "presets" / kind


def preset_names(kind: str) -> list[str]:
    folder = preset_folder(kind)
    if not folder.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_file(kind: str, name: str) -> Traversable | None:
    """The preset ``name`` of ``kind``, or None when the package ships none by that name."""
    if not name or "/" in name or "\\" in name:
        return None
    path = preset_folder(kind) / f"{name}.yaml"
    return path if path.is_file() else None


def read_preset(kind: str, name: str) -> dict[str, Any]:
    """A shipped preset's settings (for scripts: ``read_preset("train", "fast-cpu")``)."""
    path = preset_file(kind, name)
    if path is None:
        names = preset_names(kind)
        raise UserError(
            f"unknown {kind} preset {name!r}{did_you_mean(name, names)}: "
            f"choose one of {', '.join(names) or 'none'}"
        )
    return read_yaml(path)
