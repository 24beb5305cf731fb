"""The package's layers (docs/architecture.md): no import goes up a layer or across to a peer
that must not be needed, no module-level import forms a circle, and the remote client and the
server load without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import lmaas_tune

ROOT = Path(lmaas_tune.__file__).parent

#: lowest first; a module may import its own layer and the layers below it (longest prefix decides)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("lmaas_tune", "lmaas_tune.errors", "lmaas_tune.registry")),
    ("projection", ("lmaas_tune.projection",)),
    ("backend contract", ("lmaas_tune.backends.base", "lmaas_tune.backends.traffic")),
    ("tasks", ("lmaas_tune.tasks",)),
    ("wire protocol", ("lmaas_tune.wire",)),
    ("backends, server", ("lmaas_tune.backends", "lmaas_tune.server")),
    ("methods", ("lmaas_tune.methods",)),
    ("runs", ("lmaas_tune.runs",)),
    ("tuning", ("lmaas_tune.tuning",)),
    ("sweeps", ("lmaas_tune.sweeps",)),
    ("cli", ("lmaas_tune.cli", "lmaas_tune.__main__")),
]
#: peers in one layer that must not import each other (importer prefix -> forbidden prefixes)
APART = {
    "lmaas_tune.server": ("lmaas_tune.backends.local", "lmaas_tune.backends.remote", "lmaas_tune.backends.vllm",
                          "lmaas_tune.backends.http"),
    "lmaas_tune.backends.http": ("lmaas_tune.backends.local", "lmaas_tune.backends.remote", "lmaas_tune.backends.vllm",
                                 "lmaas_tune.server", "lmaas_tune.wire"),
    "lmaas_tune.backends.remote": ("lmaas_tune.backends.local", "lmaas_tune.backends.vllm", "lmaas_tune.server"),
    # the vLLM client embeds on its side as the local backend lays out its inputs (.models, .encoding)
    "lmaas_tune.backends.vllm": ("lmaas_tune.backends.local.backend", "lmaas_tune.backends.remote",
                                 "lmaas_tune.server", "lmaas_tune.wire"),
    "lmaas_tune.backends.local": ("lmaas_tune.backends.remote", "lmaas_tune.backends.vllm", "lmaas_tune.backends.http",
                                  "lmaas_tune.server", "lmaas_tune.wire"),
}


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    best, rank = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    assert rank >= 0, f"{module} is in no layer: add it to LAYERS and docs/architecture.md"
    return rank


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every lmaas_tune import of the file."""
    module = _name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text("utf-8"))
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] + [f"{target}.{a.name}" for a in node.names]
            found = [n for n in names if (ROOT.parent / (n.replace(".", "/") + ".py")).is_file()
                     or (ROOT.parent / n.replace(".", "/") / "__init__.py").is_file()]
            out += [(n, node.lineno, id(node) in top) for n in found[-1:] or [target] if n.startswith("lmaas_tune")]
        elif isinstance(node, ast.Import):
            out += [(a.name, node.lineno, id(node) in top) for a in node.names if a.name.startswith("lmaas_tune")]
    return out


MODULES = {_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def test_no_import_goes_up_a_layer_or_across_to_a_kept_apart_peer() -> None:
    wrong = []
    for module, path in MODULES.items():
        if module == "lmaas_tune":
            continue  # the package root re-exports the public API lazily
        for target, line, _ in _imports(path):
            if _layer(target) > _layer(module):
                wrong.append(f"{path.relative_to(ROOT.parent)}:{line} {module} ({LAYERS[_layer(module)][0]}) imports "
                             f"{target} ({LAYERS[_layer(target)][0]})")
            for importer, forbidden in APART.items():
                if module.startswith(importer) and target.startswith(forbidden):
                    wrong.append(f"{path.relative_to(ROOT.parent)}:{line} {module} imports {target}, kept apart")
    assert not wrong, "\n".join(wrong)


def test_module_level_imports_form_no_circle() -> None:
    graph = {m: {t for t, _, top in _imports(p) if top and t in MODULES and t != m} for m, p in MODULES.items()}
    # a package's __init__ re-exports its children: the child -> parent edge Python resolves first is not a circle
    for m in graph:
        graph[m] = {t for t in graph[m] if not m.startswith(t + ".")}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, circles


def test_the_layer_check_sees_a_wrong_import(tmp_path: Path) -> None:
    """The checks above can fail: a lower layer importing a higher one is found."""
    assert _layer("lmaas_tune.tasks.spec") < _layer("lmaas_tune.tuning.tuner")
    assert _layer("lmaas_tune.backends.base") < _layer("lmaas_tune.wire") < _layer("lmaas_tune.backends.remote.client")
    imports = _imports(MODULES["lmaas_tune.cli.fit"])
    assert any(t == "lmaas_tune.tuning.workflows" for t, _, _ in imports)


@pytest.mark.parametrize("module", ["lmaas_tune.backends.remote", "lmaas_tune.backends.http", "lmaas_tune.backends.vllm",
                                    "lmaas_tune.server", "lmaas_tune.wire",
                                    "lmaas_tune.backends"])
def test_remote_client_and_server_load_without_torch(module: str) -> None:
    code = f"import sys, {module}; loaded = [m for m in ('torch', 'transformers') if m in sys.modules]; print(loaded)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"importing {module} loaded {out}"
