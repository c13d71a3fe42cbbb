"""Build a validated, frozen config: defaults < YAML file < command-line overrides.

``load_config(path, overrides)`` returns a :class:`Config` whose sections are
frozen dataclasses generated from :mod:`abcrown_plugins.config.schema`, so
``cfg.training.epochs`` is an ``int``. Every problem raises
:class:`~abcrown_plugins.errors.UserError` with one line naming the key (and
the closest valid key), the expected kind, or the file and line.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import yaml

from abcrown_plugins.config.kinds import KindError
from abcrown_plugins.config.schema import CHECKS, SECTION_BY_NAME, SECTIONS
from abcrown_plugins.errors import UserError


def _section_class(section) -> type:
    fields = [(o.key, Any, dataclasses.field(default=o.default)) for o in section.options]
    return dataclasses.make_dataclass(section.name.capitalize() + "Config", fields, frozen=True)


_SECTION_CLASSES = {s.name: _section_class(s) for s in SECTIONS}


class _ConfigBase:
    """The whole configuration; one frozen dataclass attribute per schema section."""

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (tuples as lists), YAML/JSON-safe."""
        out = {}
        for s in SECTIONS:
            sec = getattr(self, s.name)
            out[s.name] = {o.key: _plain(getattr(sec, o.key)) for o in s.options}
        return out

    def non_defaults(self) -> dict[str, Any]:
        """``{"section.key": value}`` for every value that differs from its default."""
        out = {}
        for s in SECTIONS:
            sec = getattr(self, s.name)
            for o in s.options:
                v = getattr(sec, o.key)
                if v != o.default:
                    out[f"{s.name}.{o.key}"] = _plain(v)
        return out

    def hash(self, exclude_sections: Iterable[str] = ("output",)) -> str:
        """10-hex digest of the non-default settings, output and naming left out.

        Two configs that would compute the same thing share the hash, so it names
        the output folder and guards resumption against a changed config.
        """
        ignore = set(exclude_sections) | {"general.name", "general.progress", "general.num_threads"}
        items = {k: v for k, v in self.non_defaults().items()
                 if k not in ignore and k.split(".")[0] not in ignore}
        blob = json.dumps(items, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def replace(self, **changes: dict[str, Any]) -> "_ConfigBase":
        """A copy with ``section={key: value}`` changes, validated like any override."""
        flat = {f"{sec}.{k}": v for sec, kv in changes.items() for k, v in kv.items()}
        return build_config(self.to_dict(), flat.items(), source="replace()")


Config = dataclasses.make_dataclass(
    "Config", [(s.name, Any) for s in SECTIONS], bases=(_ConfigBase,), frozen=True)
Config.__doc__ = _ConfigBase.__doc__
Config.__module__ = __name__


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _closest(word: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


def all_keys() -> list[str]:
    return [f"{s.name}.{o.key}" for s in SECTIONS for o in s.options]


def _set(values: dict[str, dict[str, Any]], dotted: str, raw: Any, source: str) -> None:
    section_name, _, key = dotted.partition(".")
    section = SECTION_BY_NAME.get(section_name)
    if section is None or not key:
        raise UserError(f"unknown config key '{dotted}' in {source}{_closest(dotted, all_keys())}")
    option = next((o for o in section.options if o.key == key), None)
    if option is None:
        raise UserError(f"unknown config key '{dotted}' in {source}{_closest(dotted, all_keys())}")
    try:
        values[section_name][key] = option.kind.parse(raw)
    except KindError as e:
        raise UserError(f"config key '{dotted}' in {source}: {e}") from None


def build_config(tree: dict[str, Any] | None, overrides: Iterable[tuple[str, Any]] = (),
                 source: str = "config", override_source: str = "command line") -> Config:
    """Validate a nested dict (as from YAML) plus dotted overrides into a Config."""
    values: dict[str, dict[str, Any]] = {s.name: {} for s in SECTIONS}
    tree = tree or {}
    if not isinstance(tree, dict):
        raise UserError(f"{source}: the top level must be a mapping of sections "
                        f"({', '.join(SECTION_BY_NAME)}), got {type(tree).__name__}")
    for section_name, body in tree.items():
        if section_name not in SECTION_BY_NAME:
            raise UserError(f"unknown config section '{section_name}' in {source}"
                            f"{_closest(str(section_name), SECTION_BY_NAME)}")
        if body is None:
            continue
        if not isinstance(body, dict):
            raise UserError(f"config section '{section_name}' in {source}: expected a mapping of keys, "
                            f"got {body!r}")
        for key, raw in body.items():
            _set(values, f"{section_name}.{key}", raw, source)
    for dotted, raw in overrides:
        _set(values, dotted, raw, override_source)
    cfg = Config(**{name: _SECTION_CLASSES[name](**values[name]) for name in values})
    for check in CHECKS:
        if not check.holds(cfg):
            raise UserError(check.message(cfg))
    return cfg


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file safely; a missing file or a syntax error is one line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file '{path}' not found (pass a YAML file, e.g. exp_configs/quickstart.yaml)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config file '{path}': {e}") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = (e.problem or e.context or "syntax error").strip()
        raise UserError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None


def parse_override_args(args: list[str]) -> list[tuple[str, Any]]:
    """``["--training.epochs", "3", "--data.root=/d"]`` -> ``[("training.epochs", 3), ...]``.

    Values are read as YAML scalars/flow lists (``3``, ``true``, ``[1, 2]``,
    ``null``); kinds then validate them. Nothing is evaluated.
    """
    out = []
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg:
            raise UserError(f"unexpected argument '{arg}'; overrides look like --section.key VALUE "
                            f"(e.g. --training.epochs 3)")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise UserError(f"override '{arg}' has no value; write {arg} VALUE")
            key, raw = arg[2:], args[i + 1]
            i += 2
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        out.append((key, value))
    return out


def load_config(path: str | Path | None, overrides: Iterable[tuple[str, Any]] = ()) -> Config:
    """defaults < YAML file at ``path`` (optional) < ``overrides``."""
    tree = read_yaml(path) if path is not None else {}
    return build_config(tree, overrides, source=str(path) if path else "config")


def default_config() -> Config:
    return build_config({})


def dump_reference() -> str:
    """The full option reference as commented YAML, generated from the schema."""
    lines = ["# abcrown_plugins configuration reference: every key, its kind, default and help.",
             "# Precedence: defaults < YAML file < command line (--section.key VALUE).", ""]
    for s in SECTIONS:
        lines.append(f"# {s.help}")
        lines.append(f"{s.name}:")
        for o in s.options:
            lines.append(f"  # {o.help} [{o.kind.name}]")
            default = yaml.safe_dump({o.key: _plain(o.default)}, default_flow_style=True, width=1000).strip()
            lines.append(f"  {default[1:-1].strip()}")
        lines.append("")
    return "\n".join(lines)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
