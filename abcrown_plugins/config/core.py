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

from abcrown_plugins.config.kinds import KindError, quote
from abcrown_plugins.config.schema import CHECKS, SECTION_BY_NAME, SECTIONS, WARNINGS
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

    def hashed_settings(self, exclude_sections: Iterable[str] = ("output", "executor")) -> dict[str, Any]:
        """The non-default settings :meth:`hash` digests: output, executor and naming left out."""
        ignore = set(exclude_sections) | {"general.name", "general.progress", "general.num_threads"}
        return {k: v for k, v in self.non_defaults().items() if k not in ignore and k.split(".")[0] not in ignore}

    def hash(self, exclude_sections: Iterable[str] = ("output", "executor")) -> str:
        """10-hex digest of the non-default settings, output, executor and naming left out.

        Two configs that would compute the same thing share the hash, so it names
        the output folder and guards resumption against a changed config.
        """
        items = self.hashed_settings(exclude_sections)
        blob = json.dumps(items, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:10]

    def replace(self, **changes: dict[str, Any]) -> "_ConfigBase":
        """A copy with ``section={key: value}`` changes, validated like any override (they count as given)."""
        flat = {f"{sec}.{k}": v for sec, kv in changes.items() for k, v in kv.items()}
        out = build_config(self.to_dict(), flat.items(), source="replace()")
        return dataclasses.replace(out, given=self.given | frozenset(flat))

    def is_given(self, key: str) -> bool:
        """Whether ``"section.key"`` was set by the YAML file or an override (even to its default value).

        Lets a command fall back to something better than the schema's default
        when the user said nothing (``verify`` takes the checkpoint's eps).
        """
        return key in self.given


Config = dataclasses.make_dataclass(
    "Config", [(s.name, Any) for s in SECTIONS]
    + [("given", frozenset, dataclasses.field(default=frozenset(), compare=False, repr=False))],
    bases=(_ConfigBase,), frozen=True)
Config.__doc__ = _ConfigBase.__doc__
Config.__module__ = __name__


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def _closest(word: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(word[:200], list(candidates), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else ""


def _name(text: Any) -> str:
    """A key as a message shows it: at most 80 characters."""
    text = str(text)
    return text if len(text) <= 80 else text[:80] + "..."


def all_keys() -> list[str]:
    return [f"{s.name}.{o.key}" for s in SECTIONS for o in s.options]


def _set(values: dict[str, dict[str, Any]], dotted: str, raw: Any, source: str) -> None:
    section_name, _, key = dotted.partition(".")
    section = SECTION_BY_NAME.get(section_name)
    if section is None or not key:
        raise UserError(f"unknown config key '{_name(dotted)}' in {source}{_closest(dotted, all_keys())}")
    option = next((o for o in section.options if o.key == key), None)
    if option is None:
        raise UserError(f"unknown config key '{_name(dotted)}' in {source}{_closest(dotted, all_keys())}")
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
            raise UserError(f"unknown config section '{_name(section_name)}' in {source}"
                            f"{_closest(str(section_name), SECTION_BY_NAME)}")
        if body is None:
            continue
        if not isinstance(body, dict):
            raise UserError(f"config section '{section_name}' in {source}: expected a mapping of keys, "
                            f"got {quote(body)}")
        for key, raw in body.items():
            _set(values, f"{section_name}.{key}", raw, source)
    for dotted, raw in overrides:
        _set(values, dotted, raw, override_source)
    given = frozenset(f"{name}.{key}" for name, kv in values.items() for key in kv)
    cfg = Config(**{name: _SECTION_CLASSES[name](**values[name]) for name in values}, given=given)
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
        raise UserError(f"{path}: invalid YAML: {str(e).splitlines()[0][:200]}") from None
    except (ValueError, RecursionError) as e:  # an integer of > 4300 digits; nesting deeper than Python's stack
        reason = "a value too large to read" if isinstance(e, ValueError) else "nesting too deep to read"
        raise UserError(f"{path}: invalid YAML: {reason}") from None


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
            raise UserError(f"unexpected argument '{_name(arg)}'; overrides look like --section.key VALUE "
                            f"(e.g. --training.epochs 3)")
        if "=" in arg:
            key, raw = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise UserError(f"override '{_name(arg)}' has no value; write {_name(arg)} VALUE")
            key, raw = arg[2:], args[i + 1]
            i += 2
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except (yaml.YAMLError, ValueError, RecursionError):  # not YAML (or too large a number): the text itself
            value = raw
        out.append((key, value))
    return out


def load_config(path: str | Path | None, overrides: Iterable[tuple[str, Any]] = ()) -> Config:
    """defaults < YAML file at ``path`` (optional) < ``overrides``.

    A file that sets nothing (empty, or only comments) is an error: it is almost
    always the wrong file, and leaving the file out gives the defaults anyway.
    """
    if path is None:
        return build_config({}, overrides, source="config")
    tree = read_yaml(path)
    empty = tree is None or tree == {}
    cfg = build_config({} if empty else tree, overrides, source=str(path))  # a bad override is named first
    if empty:
        raise UserError(f"config file '{path}' is empty; give it at least one section (e.g. 'training: "
                        f"{{epochs: 3}}'), or leave the config out to use the defaults")
    return cfg


def config_warnings(cfg: Config) -> list[str]:
    """One line per :data:`~abcrown_plugins.config.schema.WARNINGS` rule ``cfg`` breaks (allowed, but likely a
    mistake)."""
    return [w.message(cfg) for w in WARNINGS if not w.holds(cfg)]


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
