"""Every check this project runs, one session each: ``nox -s tests lint typecheck docs bench``.

``tests`` runs once per supported Python (the classifiers in pyproject.toml) that is installed;
the others are skipped, saying so. ``lowest`` runs the suite on the oldest supported Python
against the built wheel, with every dependency at the floor pyproject.toml declares.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import nox
from packaging.requirements import Requirement

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True
# A Python that is not installed skips its sessions, on CI too (nox errors there by default).
nox.options.error_on_missing_interpreters = False

PYPROJECT = nox.project.load_toml("pyproject.toml")
ROOT = Path(__file__).parent
PYTHONS = nox.project.python_versions(PYPROJECT)
EXTRAS = sorted(PYPROJECT["project"]["optional-dependencies"])
ALL_EXTRAS = f"[{','.join(EXTRAS)}]"


def _find_pyenv_pythons() -> None:
    """Let nox find Pythons that pyenv installed but did not activate.

    pyenv's ``python3.12`` shim answers only for the versions ``pyenv global`` names, so nox
    would call an installed 3.12 missing; its own ``bin`` folder, at the end of ``PATH``, is
    found after the shim fails.
    """
    versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for python in PYTHONS:
        for bin_dir in sorted(versions.glob(f"{python}.*/bin")):
            os.environ["PATH"] += os.pathsep + str(bin_dir)


_find_pyenv_pythons()


def install(session: nox.Session, *groups: str, extras: str = "") -> None:
    # Recent pip for dependency groups and PEP 660 editable installs.
    session.install("--upgrade", "pip")
    packages = [p for group in groups for p in nox.project.dependency_groups(PYPROJECT, group)]
    session.install("-e", f".{extras}", *packages)


def suite(session: nox.Session, *pytest_args: str) -> None:
    session.run("pytest", "--doctest-modules", *pytest_args, *session.posargs)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite, doctests included (a real redis-server on PATH is needed for Redis)."""
    install(session, "test", extras=ALL_EXTRAS)
    suite(session, "market_chat_async", "tests")


def floor(requirement: str) -> str:
    """``name>=X`` as ``name==X``: the lowest version the requirement admits."""
    parsed = Requirement(requirement)
    (spec,) = parsed.specifier  # a floor is one ">=": anything else must be thought about here
    assert spec.operator == ">=", f"{requirement!r}: only '>=' floors are pinned to their lowest"
    return f"{parsed.name}=={spec.version}"


def floors() -> list[str]:
    """Every runtime, extra and test dependency at its declared floor (each package once)."""
    declared = [
        *PYPROJECT["project"]["dependencies"],
        *(r for extra in EXTRAS for r in PYPROJECT["project"]["optional-dependencies"][extra]),
        *nox.project.dependency_groups(PYPROJECT, "test"),
    ]
    pins = {Requirement(r).name: floor(r) for r in declared}
    clashes = {floor(r) for r in declared} - set(pins.values())
    assert not clashes, f"a package has two different floors in pyproject.toml: {clashes}"
    return sorted(pins.values())


@nox.session(python=PYTHONS[0])
def lowest(session: nox.Session) -> None:
    """The suite against the built wheel, every dependency at its declared floor."""
    session.install("--upgrade", "pip")
    dist = Path(session.create_tmp()) / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    session.run("python", "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), ".")
    (wheel,) = dist.glob("*.whl")
    # Fresh each time: a reused environment would keep versions from a newer install.
    session.run("python", "-m", "pip", "uninstall", "--yes", "--quiet", "market-chat-async")
    session.install(f"{wheel}{ALL_EXTRAS}", *floors())
    session.run("python", "-m", "pip", "freeze", "--quiet", silent=False)
    # "append" puts the checkout after site-packages, so the tests import the installed wheel;
    # the doctests are collected from the installed package too.
    suite(session, "--import-mode=append", "--pyargs", "market_chat_async", "tests")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    install(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    install(session, "typecheck", extras=ALL_EXTRAS)
    session.run("mypy", "--strict", "market_chat_async")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: benchmarks/results/*.json, the plots the docs include, README's table."""
    install(session, "bench", extras="[redis]")
    for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        session.run("python", str(script.relative_to(ROOT)), *session.posargs)
    session.run("python", "benchmarks/plots.py")
    session.run("python", "benchmarks/report.py")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site, failing on any warning."""
    install(session, "docs")
    session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session(default=False)
def inventory(session: nox.Session) -> None:
    """docs/_inventories/aiohttp.inv: aiohttp's Sphinx inventory, from its sdist's docs sources.

    The API reference links to docs.aiohttp.org through it. Built here rather than downloaded
    when the docs build, which must not need the network. ``nox -s inventory -- 3.14.5`` builds
    the inventory of that aiohttp release; the newest by default.
    """
    session.install(
        "sphinx",
        "aiohttp-theme",
        "myst-parser",
        "sphinx-issues",
        "sphinxcontrib-mermaid",
        "sphinxcontrib-towncrier",
    )
    tmp = Path(session.create_tmp())
    shutil.rmtree(tmp / "sdist", ignore_errors=True)
    aiohttp = f"aiohttp=={session.posargs[0]}" if session.posargs else "aiohttp"
    session.run(
        "python", "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
        "-d", str(tmp / "sdist"), aiohttp,
    )  # fmt: skip
    (archive,) = (tmp / "sdist").glob("aiohttp-*.tar.gz")
    with tarfile.open(archive) as sdist:
        sdist.extractall(tmp / "sdist", filter="data")
    (docs_dir,) = (tmp / "sdist").glob("aiohttp-*/docs")
    # No intersphinx: the inventory lists aiohttp's own objects, and needs no network.
    html = tmp / "html"
    session.run(
        "sphinx-build", "-q", "-b", "html", "-D", "intersphinx_mapping=", str(docs_dir), str(html)
    )
    target = ROOT / "docs" / "_inventories" / "aiohttp.inv"
    shutil.copyfile(html / "objects.inv", target)
    session.log(f"wrote {target.relative_to(ROOT)} from {archive.name}")
