"""The import rules of the design: pure layers stay pure, extras stay optional."""

from __future__ import annotations

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
        "market_chat_async._limits",
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


def test_public_names() -> None:
    for name in market_chat_async.__all__:
        obj = getattr(market_chat_async, name)
        if name != "__version__":
            assert obj.__doc__, f"{name} has no docstring"
