"""The import rules of the design: arrows point one way, pure layers stay pure, extras optional."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import market_chat_async

PACKAGE_DIR = str(Path(market_chat_async.__file__).parent)


def modules_after_import(module: str, *, bare_package: bool = True) -> set[str]:
    """What importing ``module`` loads in a fresh interpreter.

    With ``bare_package`` the package's ``__init__`` (which re-exports the client) is bypassed,
    so only the module's own imports count.
    """
    setup = (
        "import sys, types; pkg = types.ModuleType('market_chat_async'); "
        f"pkg.__path__ = [{PACKAGE_DIR!r}]; sys.modules['market_chat_async'] = pkg; "
        if bare_package
        else "import sys; "
    )
    code = (
        setup
        + f"import importlib; importlib.import_module({module!r}); print('\\n'.join(sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize(
    "module",
    [
        "market_chat_async._models",
        "market_chat_async._wire",
        "market_chat_async._errors",
        "market_chat_async._protocol",
        "market_chat_async._retry",
        "market_chat_async._limits",
        "market_chat_async._bulk",
    ],
)
def test_pure_layers_do_not_import_http(module: str) -> None:
    loaded = modules_after_import(module)
    assert "aiohttp" not in loaded
    assert "redis" not in loaded


def test_package_import_does_not_need_the_extras() -> None:
    loaded = modules_after_import("market_chat_async", bare_package=False)
    assert "redis" not in loaded
    assert "tqdm" not in loaded
    assert "market_chat_async.cli" not in loaded


def test_testing_server_does_not_share_the_parser() -> None:
    loaded = modules_after_import("market_chat_async.testing")
    assert "market_chat_async._wire" not in loaded
    assert "market_chat_async._protocol" not in loaded


def test_importing_the_package_does_not_load_the_http_stack() -> None:
    loaded = modules_after_import("market_chat_async", bare_package=False)
    assert "aiohttp" not in loaded


def test_public_names() -> None:
    for name in market_chat_async.__all__:
        obj = getattr(market_chat_async, name)
        if callable(obj):
            assert obj.__doc__, f"{name} has no docstring"


# -- the import graph ---------------------------------------------------------------------------

PACKAGE = Path(market_chat_async.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _in_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (at run time: TYPE_CHECKING imports aside)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        targets: set[str] = set()
        for node in ast.walk(tree):
            if _in_type_checking(node, parents):
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join([*base, node.module] if node.module else base)
                else:
                    target = node.module or ""
                # "from . import _x" imports the module _x; "from . import X" the package.
                targets.add(f"{target}:from")
                targets.update(f"{target}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[name] = {t for t in targets if t.startswith("market_chat_async")} - {name}
    modules = set(graph)

    def resolve(deps: set[str]) -> set[str]:
        out = {d for d in deps if d in modules}
        for dep in deps:
            if dep.endswith(":from"):
                package = dep.removesuffix(":from")
                # Names that are not modules are attributes of the package: it is imported.
                if not any(d.startswith(package + ".") and d in modules for d in deps):
                    out.add(package)
        return out

    return {name: resolve(deps) - {name} for name, deps in graph.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_cycles_between_modules() -> None:
    graph = import_graph()
    # The package's own __init__ re-exports lazily and may name anything.
    graph = {m: {d for d in deps if d != "market_chat_async"} for m, deps in graph.items()}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, " -> ".join([*visiting, module])
        visiting.append(module)
        for dep in sorted(graph[module]):
            visit(dep)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


# Which layers each layer may import (besides its own modules). Arrows point one way:
# _models <- _wire <- _protocol <- _funnel <- _client <- (notifications, cli); _limits and
# _retry stand alone; _bulk depends on a protocol of the client, not on it; nothing imports cli.
ALLOWED = {
    "_version": set(),
    "_env": set(),
    "_models": set(),
    "_errors": {"_models"},
    "_wire": {"_models"},
    "_limits": {"_errors"},
    "_protocol": {"_models", "_wire", "_errors", "_limits"},
    "_retry": {"_errors"},
    "_transport": {"_errors", "_protocol"},
    "_bulk": {"_models", "_wire", "_protocol", "_errors"},
    "_funnel": {"_errors", "_limits", "_protocol", "_retry", "_transport", "_version"},
    "_files": {"_protocol"},
    "_options": {"_env", "_funnel", "_limits", "_protocol"},
    "_client": {
        "_bulk", "_env", "_errors", "_files", "_funnel", "_limits", "_models", "_options",
        "_protocol", "_retry", "_transport", "_wire",
    },
    "testing": {"_version"},
}  # fmt: skip


def test_arrows_point_one_way() -> None:
    for module, deps in import_graph().items():
        layer = _layer(module)
        for dep in deps:
            dep_layer = _layer(dep)
            if dep_layer in ("", layer):
                continue
            assert dep_layer != "cli" or layer == "__main__", f"{module} imports the CLI ({dep})"
            if layer in ALLOWED:
                assert dep_layer in ALLOWED[layer], f"{module} must not import {dep}"
