"""What ``pip install market-chat-async`` gets: the sdist and the wheel, built by the real backend.

Both are built once for the module, into a temporary directory, by the build backend that
pyproject.toml names (installed for the build if it is missing; the tests are skipped, saying
so, only when it cannot be installed).
"""

from __future__ import annotations

import email.message
import email.parser
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import attrs
import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
LICENSE_TEXT = (ROOT / "LICENSE").read_text(encoding="utf-8")
SUPPORTED_PYTHONS = ("3.11", "3.12", "3.13")

_BUILD = """
import sys
import {backend} as backend
print(backend.build_sdist(sys.argv[1]))
print(backend.build_wheel(sys.argv[1]))
"""


@attrs.frozen
class Built:
    """What the build backend made: each archive's metadata and LICENSE text."""

    sdist_metadata: email.message.Message
    sdist_license: str
    wheel_metadata: email.message.Message
    wheel_license: str


def _backend_path(tmp: Path) -> str | None:
    """A ``PYTHONPATH`` under which the build backend imports (``None``: it already does)."""
    backend = PYPROJECT["build-system"]["build-backend"]
    probe = subprocess.run(
        [sys.executable, "-c", f"import {backend}"], capture_output=True, check=False
    )
    if probe.returncode == 0:
        return None
    target = tmp / "backend"
    requires = PYPROJECT["build-system"]["requires"]
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target), *requires]
    if subprocess.run(pip, capture_output=True, check=False).returncode != 0:
        pytest.skip(f"the build backend ({', '.join(requires)}) cannot be installed here")
    return str(target)


def _metadata(text: str) -> email.message.Message:
    return email.parser.Parser().parsestr(text)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    tmp = tmp_path_factory.mktemp("packaging")
    env = dict(os.environ)
    backend_path = _backend_path(tmp)
    if backend_path is not None:
        env["PYTHONPATH"] = backend_path
    out = tmp / "dist"
    build = _BUILD.format(backend=PYPROJECT["build-system"]["build-backend"])
    done = subprocess.run(
        [sys.executable, "-c", build, str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"the build failed:\n{done.stdout}\n{done.stderr}"
    sdist_name, wheel_name = done.stdout.split()[-2:]
    with tarfile.open(out / sdist_name) as sdist:
        top = sdist_name.removesuffix(".tar.gz")

        def read(name: str) -> str:
            member = sdist.extractfile(f"{top}/{name}")
            assert member is not None, f"{name} is not a file in the sdist"
            return member.read().decode("utf-8")

        sdist_metadata, sdist_license = _metadata(read("PKG-INFO")), read("LICENSE")
    with zipfile.ZipFile(out / wheel_name) as wheel:
        (dist_info,) = {
            n.split("/")[0] for n in wheel.namelist() if n.split("/")[0].endswith(".dist-info")
        }
        wheel_metadata = _metadata(wheel.read(f"{dist_info}/METADATA").decode("utf-8"))
        wheel_license = wheel.read(f"{dist_info}/licenses/LICENSE").decode("utf-8")
    return Built(sdist_metadata, sdist_license, wheel_metadata, wheel_license)


def _both(built: Built) -> dict[str, email.message.Message]:
    return {"sdist": built.sdist_metadata, "wheel": built.wheel_metadata}


def test_the_license_text_is_in_the_sdist_and_the_wheel(built: Built) -> None:
    assert LICENSE_TEXT.startswith("MIT License\n")
    assert built.sdist_license == LICENSE_TEXT
    assert built.wheel_license == LICENSE_TEXT
    for archive, metadata in _both(built).items():
        assert metadata["License-Expression"] == "MIT", archive
        assert metadata.get_all("License-File") == ["LICENSE"], archive


def test_the_metadata_names_the_authors_and_every_project_url(built: Built) -> None:
    urls = PROJECT["urls"]
    assert set(urls) == {"Homepage", "Documentation", "Source", "Changelog", "Issues"}
    for archive, metadata in _both(built).items():
        assert metadata["Author"] == "the market-chat-async authors", archive
        listed = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL", []))
        assert listed == urls, archive


def test_the_documentation_and_source_urls_are_the_docs_sites_own(built: Built) -> None:
    mkdocs = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")

    def setting(name: str) -> str:
        found = re.search(rf"^{name}: (\S+)$", mkdocs, re.M)
        assert found, f"mkdocs.yml has no {name}"
        return found[1]

    assert PROJECT["urls"]["Documentation"] == setting("site_url")
    assert PROJECT["urls"]["Source"] == setting("repo_url")
    assert PROJECT["urls"]["Changelog"].startswith(setting("site_url"))
    assert PROJECT["urls"]["Issues"].startswith(setting("repo_url"))


def test_the_classifiers_name_each_supported_python_and_a_status(built: Built) -> None:
    for archive, metadata in _both(built).items():
        classifiers = metadata.get_all("Classifier", [])
        pythons = {
            c.rpartition(" :: ")[2]
            for c in classifiers
            if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
        }
        assert pythons == set(SUPPORTED_PYTHONS), archive
        assert [c for c in classifiers if c.startswith("Development Status :: ")], archive
        assert metadata["Requires-Python"] == f">={SUPPORTED_PYTHONS[0]}", archive


def test_every_declared_dependency_keeps_its_floor_in_the_metadata(built: Built) -> None:
    declared = {str(Requirement(r)) for r in PROJECT["dependencies"]}
    for extra, requirements in PROJECT["optional-dependencies"].items():
        declared |= {f'{Requirement(r)}; extra == "{extra}"' for r in requirements}
    for archive, metadata in _both(built).items():
        requires = {str(Requirement(r)) for r in metadata.get_all("Requires-Dist", [])}
        assert requires == declared, archive
        assert all(">=" in str(Requirement(r).specifier) for r in requires), archive
