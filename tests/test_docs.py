"""The documentation, kept true: its examples run, its reference tables match the code.

Every fenced block of ``README.md`` and ``docs/*.md`` is taken as written:

* ``python`` blocks run in page order, sharing one namespace per page (like a notebook), in a
  temporary directory, against the bundled Market test server: ``MarketChatClient``'s default
  ``base_url`` points at it, ``YANDEX_MARKET_API_KEY`` holds its key, and it also accepts the
  ``"..."`` the examples use as a placeholder. Complete programs (``asyncio.run(main())``) run
  as they are; a block with top-level ``await`` runs in the page's event loop, with a ``client``
  for the test server already defined, as in ``python -m asyncio``.
* ``pycon`` blocks (``>>>``) are doctests in the page's namespace: their output is compared.
* ``console`` lines starting with ``$ market-chat`` are parsed by the real argument parser, and
  ``get`` / ``fetch`` run in-process against the test server (unless they name a
  ``--base-url`` of their own); ``$ python -m
  market_chat_async.testing`` lines are parsed by its parser. Other commands are not run.
* A block with a ``title="name"`` is a file: it is written to the temporary directory instead
  of being run. If a page writes ``test_*.py`` files, pytest runs them there, as the reader would.
* ``<!-- docs-test: skip -->`` on the line before a block skips it (it must still compile).

Besides: the configuration page lists every option of every constructor and command, the Redis
key names match the code, the getting-started page shows the README's two commands verbatim,
the benchmark numbers the docs include are what ``benchmarks/results/*.json`` hold, and every
public name has a docstring (classes and functions one with an example).
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import doctest
import faulthandler
import importlib.util
import inspect
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import market_chat_async
from market_chat_async import (
    ChatMessage,
    MarketChatClient,
    Quota,
    RetryPolicy,
    cli,
    notifications,
    testing,
)
from market_chat_async._wire import converter
from market_chat_async.notifications import create_app
from market_chat_async.testing import MarketTestServer, serve

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
API_KEY = testing.DEFAULT_API_KEY
PLACEHOLDER_KEY = "..."
SKIP_MARK = "<!-- docs-test: skip -->"
PAGE_TIMEOUT = 60.0  # seconds; a hung example fails with a traceback, not forever

_FENCE_OPEN = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")


@attrs.frozen
class Block:
    """One fenced block of a page."""

    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    title: str | None
    code: str
    skip: bool

    @property
    def where(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of a Markdown page, dedented, with their language and title."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE_OPEN.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence, info = opening["indent"], opening["fence"], opening["info"].strip()
        end = i + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        body = [
            line[len(indent) :] if line.startswith(indent) else line for line in lines[i + 1 : end]
        ]
        lang = info.split()[0].lstrip(".{") if info else ""
        title = re.search(r'title="([^"]+)"', info)
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        found.append(
            Block(
                page=page,
                line=i + 1,
                lang=lang,
                title=title[1] if title else None,
                code="\n".join(body) + "\n",
                skip=before == SKIP_MARK,
            )
        )
        i = end + 1
    return found


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


# -- the test server, in a thread of its own --------------------------------------------------


@pytest.fixture(scope="module")
def market_url() -> Iterator[str]:
    """The bundled Market test server on a free port, in its own thread and event loop.

    A thread of its own, because the examples start event loops of their own
    (``asyncio.run``) in the test's thread, and the server must keep answering meanwhile.
    """
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def run() -> None:
        server = MarketTestServer(api_keys=[API_KEY, PLACEHOLDER_KEY])
        async with serve(server) as running:
            state["url"], state["stop"] = running.url, asyncio.Event()
            state["loop"] = asyncio.get_running_loop()
            ready.set()
            await state["stop"].wait()

    thread = threading.Thread(target=lambda: asyncio.run(run()), daemon=True)
    thread.start()
    assert ready.wait(10), "the test server did not start"
    yield state["url"]
    state["loop"].call_soon_threadsafe(state["stop"].set)
    thread.join(10)


@pytest.fixture
def docs_env(market_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the library's defaults at the test server and work in a temporary directory."""
    defaults = MarketChatClient.__init__.__kwdefaults__
    assert defaults is not None
    assert "base_url" in defaults
    monkeypatch.setitem(defaults, "base_url", market_url)
    monkeypatch.setenv("YANDEX_MARKET_API_KEY", API_KEY)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- running a page -------------------------------------------------------------------------


class PageRun:
    """The examples of one page, run in order in one namespace."""

    def __init__(self, page: Path, workdir: Path) -> None:
        self.page = page
        self.workdir = workdir
        # Not "__main__": a program's `if __name__ == "__main__":` part (serving forever) is
        # left out, while the definitions above it run.
        self.namespace: dict[str, Any] = {"__name__": "docs_example"}
        self.runner = asyncio.Runner()
        self.client: MarketChatClient | None = None
        self.test_files: list[Path] = []

    def run(self) -> int:
        # An example that hangs in this process can only be stopped by ending the process:
        # faulthandler does that, with every thread's traceback. It is off while the page's
        # test files run in a child pytest, whose own timeout kills the child instead (an
        # exit here would leave it running).
        faulthandler.dump_traceback_later(PAGE_TIMEOUT, exit=True)
        try:
            ran = self.examples()
        finally:
            faulthandler.cancel_dump_traceback_later()
        if self.test_files:
            self.pytest()
        return ran

    def examples(self) -> int:
        ran = 0
        with self.runner:
            try:
                for block in blocks(self.page):
                    ran += self.block(block)
            finally:
                if self.client is not None:
                    self.runner.run(self.client.close())
        return ran

    def block(self, block: Block) -> bool:
        if block.skip:
            return False
        if block.title is not None:
            path = self.workdir / block.title
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.code, encoding="utf-8")
            if path.name.startswith("test_") and path.suffix == ".py":
                self.test_files.append(path)
            return True
        if block.lang == "python":
            self.python(block)
            return True
        if block.lang == "pycon":
            self.doctest(block)
            return True
        if block.lang == "console":
            return self.console(block)
        return False

    def python(self, block: Block) -> None:
        # Leading newlines make tracebacks point at the page's own line numbers.
        source = "\n" * block.line + block.code
        code = compile(source, str(block.page), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        if code.co_flags & inspect.CO_COROUTINE:
            if self.client is None:
                self.client = self.runner.run(_make_client())
            self.namespace.setdefault("client", self.client)
            self.runner.run(eval(code, self.namespace))
        else:
            exec(code, self.namespace)

    def doctest(self, block: Block) -> None:
        parser = doctest.DocTestParser()
        test = parser.get_doctest(
            block.code, self.namespace, block.where, str(block.page), block.line
        )
        report = io.StringIO()
        runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
        runner.run(test, out=report.write, clear_globs=False)
        assert runner.failures == 0, f"{block.where}:\n{report.getvalue()}"

    def console(self, block: Block) -> bool:
        ran = False
        for command in _commands(block.code):
            words = shlex.split(command)
            if words[:1] == ["market-chat"]:
                ran |= _market_chat(words[1:], block)
            elif words[:3] == ["python", "-m", "market_chat_async"]:
                ran |= _market_chat(words[3:], block)
            elif words[:3] == ["python", "-m", "market_chat_async.testing"]:
                _parse(testing._parser(), words[3:], block)
                ran = True
        return ran

    def pytest(self) -> None:
        done = run_child(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                # A test still running after this long dumps its traceback into the output
                # the failure shows, before the timeout kills it.
                "-o",
                f"faulthandler_timeout={PAGE_TIMEOUT * 3 / 4:g}",
                *map(str, self.test_files),
            ],
            cwd=self.workdir,
            timeout=PAGE_TIMEOUT,
        )
        assert done.returncode == 0, (
            f"pytest on the test files of {self.page.name}:\n{done.stdout}\n{done.stderr}"
        )


def run_child(args: list[str], *, cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a child process to completion; past ``timeout`` seconds, fail the test.

    The child leads a process group of its own, and whatever way this returns (done, timed
    out, interrupted) the whole group is killed: neither the child nor anything it started
    goes on running after the test.
    """
    with subprocess.Popen(
        args,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as child:
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(child)
            out, err = _leftover_output(child)
            pytest.fail(
                f"{shlex.join(args)} was killed after {timeout:g} s:\n{out}\n{err}",
                pytrace=False,
            )
        finally:
            _kill_group(child)
    return subprocess.CompletedProcess(args, child.returncode, out, err)


def _kill_group(child: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is gone already
        os.killpg(child.pid, signal.SIGKILL)


def _leftover_output(child: subprocess.Popen[str]) -> tuple[str, str]:
    try:
        out, err = child.communicate(timeout=10)
    except subprocess.TimeoutExpired:  # something left the group and holds the pipes
        return "", "(output lost: a process outside the child's group holds its pipes)"
    return out, err


async def _make_client() -> MarketChatClient:
    return MarketChatClient(api_key=API_KEY)


def _commands(text: str) -> Iterator[str]:
    """The ``$ ...`` lines of a console block, continuation lines joined."""
    pending: str | None = None
    for raw in text.splitlines():
        line = raw.rstrip()
        if pending is not None:
            pending += " " + line.rstrip("\\").strip()
        elif line.startswith("$ "):
            pending = line[2:].rstrip("\\").strip()
        else:
            continue
        if not line.endswith("\\"):
            yield pending
            pending = None


def _parse(
    parser: argparse.ArgumentParser, args: list[str], block: Block
) -> argparse.Namespace | None:
    try:
        return parser.parse_args(args)
    except SystemExit as exc:  # argparse's way of refusing (2), or of --help/--version (0)
        code = exc.code
    assert code == 0, f"{block.where}: {shlex.join(args)!r} is not a valid command line"
    return None


def _market_chat(args: list[str], block: Block) -> bool:
    parsed = _parse(cli.build_parser(), args, block)
    if parsed is None or parsed.command not in ("get", "fetch") or parsed.base_url:
        return False  # parsed only: it serves forever, or names a server of its own
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()) as err,
    ):
        status = cli.main(args)
    assert status == 0, (
        f"{block.where}: market-chat {shlex.join(args)} exited {status}:\n{err.getvalue()}"
    )
    return True


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_examples_run(page: Path, docs_env: Path) -> None:
    PageRun(page, docs_env).run()


# A child that starts a child of its own, says both pids, then spins: as a hung test would.
_SPINNER = """
import os, subprocess, sys
grandchild = subprocess.Popen([sys.executable, "-c", "while True: pass  # spinner"])
with open("pids.part", "w") as f:
    f.write(f"{os.getpid()} {grandchild.pid}")
os.replace("pids.part", "pids")
while True: pass  # spinner
"""


def _spinning(pid: int) -> bool:
    """Whether ``pid`` is one of the spinner's processes and not yet dead (a zombie is dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X") and b"# spinner" in cmdline


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states in /proc")
def test_a_child_past_its_timeout_is_killed_with_what_it_started(tmp_path: Path) -> None:
    timeout = 0.5
    while True:
        with pytest.raises(pytest.fail.Exception, match="was killed after"):
            run_child([sys.executable, "-c", _SPINNER], cwd=tmp_path, timeout=timeout)
        if (tmp_path / "pids").exists():
            break
        # Killed before it started its own child: a busy machine; give it longer.
        timeout *= 2
        assert timeout < 120, "the spinner never started its child"
    pids = [int(pid) for pid in (tmp_path / "pids").read_text().split()]
    deadline = time.monotonic() + 30
    while any(map(_spinning, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)  # SIGKILL is delivered, but the kernel ends the process on its own time
    assert [pid for pid in pids if _spinning(pid)] == []


@pytest.mark.parametrize(
    "block",
    [b for page in PAGES for b in blocks(page) if b.lang == "python"],
    ids=lambda b: b.where,
)
def test_python_blocks_compile(block: Block) -> None:
    compile(block.code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


def test_the_docs_have_runnable_examples() -> None:
    runnable = [
        b
        for page in PAGES
        for b in blocks(page)
        if not b.skip and b.title is None and b.lang in ("python", "pycon", "console")
    ]
    assert len(runnable) >= 25
    skipped = [b.where for page in PAGES for b in blocks(page) if b.skip]
    assert len(skipped) <= 4, f"most examples should run; skipped: {skipped}"


# -- the getting-started page and the README --------------------------------------------------


def test_getting_started_shows_the_readme_commands() -> None:
    readme_commands = [
        line.strip()
        for block in blocks(README)
        if block.lang == "sh"
        for line in block.code.splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert len(readme_commands) == 2
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    for command in readme_commands:
        assert command in index, f"docs/index.md does not show README's {command!r}"


def test_the_fetch_output_shown_is_what_fetch_writes() -> None:
    lines = [
        line.strip()
        for block in blocks(DOCS / "bulk.md")
        if block.lang == "json"
        for line in block.code.splitlines()
        if line.strip()
    ]
    messages = [(line, json.loads(line)) for line in lines if '"error"' not in line]
    bad_rows = [json.loads(line) for line in lines if '"BadRow"' in line]
    assert messages
    assert bad_rows
    for line, sample in messages:
        chat_id, message_id = sample["chatId"], sample["messageId"]
        message = converter.structure(testing.auto_message(chat_id, message_id), ChatMessage)
        assert cli.json_line(cli.message_record(chat_id, message)) == line + "\n"
    for sample in bad_rows:
        _, _, value = sample["input"].partition(",")
        with pytest.raises(ValueError, match="must be a whole number") as refused:
            cli.parse_id("message_id", value)
        assert sample["error"]["message"] == str(refused.value)


# -- benchmarks -------------------------------------------------------------------------------


def _plots_module() -> Any:
    spec = importlib.util.spec_from_file_location(
        "benchmark_plots", ROOT / "benchmarks" / "plots.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_numbers_are_the_results_files() -> None:
    plots = _plots_module()
    expected = plots.numbers_markdown(plots.load_results())
    assert plots.SNIPPET.read_text(encoding="utf-8") == expected, (
        "docs/_snippets/benchmarks.md is not what benchmarks/results/*.json say: "
        "run `python benchmarks/plots.py` (nox -s bench does)"
    )


def test_benchmark_pictures_exist() -> None:
    plots = _plots_module()
    for name in ("limiter", "overhead", "bulk"):
        if name in plots.load_results():
            picture = "bulk_memory" if name == "bulk" else name
            assert (DOCS / "assets" / f"{picture}.png").exists(), "run python benchmarks/plots.py"


# -- the configuration reference ----------------------------------------------------------------


def _sections(page: Path) -> dict[str, str]:
    """Heading text (any level) -> the text up to the next heading of the same or a higher level."""
    text = page.read_text(encoding="utf-8")
    heads = list(re.finditer(r"^(#{2,6}) (.+)$", text, re.M))
    sections = {}
    for n, head in enumerate(heads):
        level = len(head[1])
        end = next((h.start() for h in heads[n + 1 :] if len(h[1]) <= level), len(text))
        sections[head[2].strip()] = text[head.end() : end]
    return sections


def _first_column(section: str) -> list[str]:
    """The first cell of every body row of the tables in a section."""
    rows = [line.strip() for line in section.splitlines() if line.strip().startswith("|")]

    def rule(row: str) -> bool:
        return set(row) <= set("|-: ")

    return [
        row.strip("|").split("|")[0].strip()
        for n, row in enumerate(rows)
        if not rule(row) and not (n + 1 < len(rows) and rule(rows[n + 1]))
    ]


def _documented_names(section: str) -> set[str]:
    return {
        name for cell in _first_column(section) for name in re.findall(r"`([A-Za-z_][\w]*)`", cell)
    }


def _parameters(func: Any, *, skip: tuple[str, ...] = ("self",)) -> set[str]:
    return {name for name in inspect.signature(func).parameters if name not in skip}


CONFIGURED = {
    "`MarketChatClient`": _parameters(MarketChatClient.__init__),
    "`Quota`": {f.name for f in attrs.fields(Quota)},
    "`RetryPolicy`": {f.name for f in attrs.fields(RetryPolicy)},
    "`create_app`": _parameters(create_app)
    | {f.name for f in attrs.fields(notifications.ReceiverOptions)},
    "`HandlerRetry`": {f.name for f in attrs.fields(notifications.HandlerRetry)},
    "`MarketTestServer`": _parameters(MarketTestServer.__init__),
}


@pytest.mark.parametrize("heading", CONFIGURED)
def test_configuration_lists_every_option(heading: str) -> None:
    sections = _sections(DOCS / "configuration.md")
    (title,) = [t for t in sections if t.startswith(heading)]
    assert _documented_names(sections[title]) == CONFIGURED[heading]


def _long_options(parser: argparse.ArgumentParser) -> set[str]:
    options = set()
    for action in parser._actions:
        options.update(o for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                options |= _long_options(sub)
    return options


@pytest.mark.parametrize(
    ("heading", "parser"),
    [
        ("`market-chat`", cli.build_parser()),
        ("`python -m market_chat_async.testing`", testing._parser()),
    ],
    ids=["market-chat", "testing"],
)
def test_configuration_lists_every_command_line_option(
    heading: str, parser: argparse.ArgumentParser
) -> None:
    sections = _sections(DOCS / "configuration.md")
    (title,) = [t for t in sections if t.startswith(heading)]
    documented = {
        option
        for cell in _first_column(sections[title])
        for option in re.findall(r"--[a-z][a-z-]*", cell)
    }
    assert documented == _long_options(parser) - {"--help"}


def test_configuration_names_the_redis_keys_the_code_uses() -> None:
    from market_chat_async._limits import _redis, _redis_scripts

    in_code = set(_redis_scripts.CABINET_KEYS) | set(_redis_scripts.RESOURCE_KEYS)
    assert set(re.findall(r"^``(\w+)``\s", _redis.__doc__ or "", re.M)) == in_code
    sections = _sections(DOCS / "configuration.md")
    (title,) = [t for t in sections if t.startswith("Redis keys")]
    assert _documented_names(sections[title]) == in_code
    assert f"{_redis._PREFIX}:{{" in sections[title]


def test_configuration_names_the_environment_variable() -> None:
    from market_chat_async._client import API_KEY_ENV

    assert API_KEY_ENV == cli.API_KEY_ENV
    assert f"`{API_KEY_ENV}`" in (DOCS / "configuration.md").read_text(encoding="utf-8")


# -- docstrings ---------------------------------------------------------------------------------

PUBLIC_MODULES = (market_chat_async, testing, notifications)


def _public_names() -> Iterator[tuple[str, Any]]:
    for module in PUBLIC_MODULES:
        for name in module.__all__:
            if not name.startswith("__"):
                yield f"{module.__name__}.{name}", getattr(module, name)


def _has_example(doc: str) -> bool:
    return ">>>" in doc or bool(re.search(r"::\n\n {4}", doc))


def test_every_public_name_has_a_docstring() -> None:
    missing = []
    for path, obj in _public_names():
        if inspect.isclass(obj) or inspect.isfunction(obj):
            doc = obj.__doc__ or ""
        else:  # constants and type aliases: the docstring under the assignment
            module, _, name = path.rpartition(".")
            doc = _attribute_docstrings(sys.modules[module]).get(name, "")
            if not doc:  # re-exported: the docstring is where it is defined
                homes = [m for n, m in sorted(sys.modules.items()) if n.startswith(module + ".")]
                doc = next((d for m in homes if (d := _attribute_docstrings(m).get(name))), "")
        if not doc.strip():
            missing.append(path)
    assert missing == []


def test_every_public_class_and_function_has_an_example() -> None:
    lacking = {
        path
        for path, obj in _public_names()
        if (inspect.isclass(obj) or inspect.isfunction(obj))
        and not _has_example(inspect.getdoc(obj) or "")
    }
    assert lacking == set()


def _attribute_docstrings(module: Any) -> dict[str, str]:
    """``NAME = ...`` followed by a string literal: the name's docstring."""
    tree = ast.parse(inspect.getsource(module))
    docs = {}
    for first, second in zip(tree.body, tree.body[1:], strict=False):
        target = (
            first.targets[0]
            if isinstance(first, ast.Assign)
            else first.target
            if isinstance(first, ast.AnnAssign)
            else None
        )
        if (
            isinstance(target, ast.Name)
            and isinstance(second, ast.Expr)
            and isinstance(second.value, ast.Constant)
            and isinstance(second.value.value, str)
        ):
            docs[target.id] = second.value.value
    return docs
