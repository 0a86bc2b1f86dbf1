"""Every check this project runs, one session each: ``nox -s tests lint typecheck docs bench``."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

PYPROJECT = nox.project.load_toml("pyproject.toml")
ROOT = Path(__file__).parent


def install(session: nox.Session, *groups: str, extras: str = "") -> None:
    # Recent pip for dependency groups and PEP 660 editable installs.
    session.install("--upgrade", "pip")
    packages = [p for group in groups for p in nox.project.dependency_groups(PYPROJECT, group)]
    session.install("-e", f".{extras}", *packages)


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite, doctests included (a real redis-server on PATH is needed for Redis)."""
    install(session, "test", extras="[redis,progress]")
    session.run("pytest", "--doctest-modules", "market_chat_async", "tests", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint rules and formatting."""
    install(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    install(session, "typecheck", extras="[redis,progress]")
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
