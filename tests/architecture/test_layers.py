"""The package's layers: no module imports from a layer above its own, and the concepts live in one place."""

from __future__ import annotations

import ast
from pathlib import Path

import abcrown_plugins

PACKAGE = Path(abcrown_plugins.__file__).parent

#: Bottom to top. A module may import from its own sub-package and from lower layers only.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("fileio", "runtime", "numerics"),
    ("config", "checkpoints", "graph", "vnnlib", "tuning"),
    ("data", "bounds", "attacks", "report", "pruning", "executor"),
    ("regularizers", "smoothing", "models"),
    ("training", "verification", "differential", "export"),
    ("transfer", "abcrown"),
    ("integration",),  # deprecated alias of abcrown
    ("experiments",),
    ("cli",),
    ("__main__",),
)
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _unit(module: str) -> str | None:
    """``abcrown_plugins.X.y`` -> ``X``; None outside the package."""
    parts = module.split(".")
    return parts[1] if parts[0] == "abcrown_plugins" and len(parts) > 1 else None


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "abcrown_plugins" else [f"abcrown_plugins.{a.name}"
                                                                            for a in node.names]
            out += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
    return out


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        yield path, rel.parts[0].removesuffix(".py")


def test_every_sub_package_has_a_layer():
    assert {unit for _, unit in _modules()} - {"__init__"} <= set(LAYER_OF)


def test_no_module_imports_from_a_layer_above():
    bad = []
    for path, unit in _modules():
        if unit == "__init__":
            continue
        for line, module in _imports(path):
            target = _unit(module)
            if target is None or target == unit:
                continue
            if LAYER_OF[target] >= LAYER_OF[unit]:
                bad.append(f"{path.relative_to(PACKAGE)}:{line} ({unit}, layer {LAYER_OF[unit]}) imports {module} "
                           f"(layer {LAYER_OF[target]})")
    assert not bad, "\n".join(bad)


def test_one_checkpoint_loader_and_no_orchestration_in_the_cli():
    sources = {p.relative_to(PACKAGE).as_posix(): p.read_text(encoding="utf-8") for p, _ in _modules()}
    # checkpoint -> model happens in models.load_model only
    builders = [name for name, text in sources.items() if "load_state_dict(ckpt.state_dict" in text
                or "load_state_dict(payload" in text]
    assert builders == ["models/__init__.py"], builders
    assert not [n for n, t in sources.items() if '["meta"]' in t or "['meta']" in t]
    # the CLI parses and calls: no data, models, training or certification of its own
    for name, text in sources.items():
        if name.startswith("cli/"):
            for forbidden in ("load_dataset", "load_model", "certify_dataset", "evaluate(", "claim_run_dir",
                              "torch."):
                assert forbidden not in text, f"{name} uses {forbidden}"
