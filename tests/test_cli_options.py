"""``market-chat``'s options as a newcomer meets them: help, verbosity, the environment, start-up
cost, shell completion."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

import market_chat_async
from market_chat_async.cli import BASE_URL_ENV
from market_chat_async.cli.options import verbosity
from market_chat_async.cli.parser import COMMANDS, build_parser
from market_chat_async.testing import RunningServer
from tests.test_cli import API_KEY, BUSINESS, environment, fetch_args, market_chat, write_csv

PACKAGE_PARENT = str(Path(market_chat_async.__file__).parent.parent)


def parsers(
    parser: argparse.ArgumentParser, name: str = "market-chat"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                yield from parsers(sub, f"{name} {command}")


def test_every_command_and_option_has_help() -> None:
    parser = build_parser()
    commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    [subparsers] = commands
    helped = {choice.dest: choice.help for choice in subparsers._choices_actions}
    assert (
        set(helped)
        == set(subparsers.choices)
        == {
            "get",
            "fetch",
            "export",
            "chats",
            "history",
            "send",
            "serve",
            "queue",
            "demo",
            "completion",
        }
    )
    assert all(helped.values()), helped
    for name, each in parsers(parser):
        if name != "market-chat":
            assert each.description, f"{name} has no description"
        for action in each._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            what = f"{name} {'/'.join(action.option_strings) or action.dest}"
            assert action.help, f"{what} has no help"
            assert action.help != argparse.SUPPRESS, f"{what} has no help"


def test_each_command_module_is_listed_once_and_runs_through_args_run() -> None:
    parser = build_parser()
    for command in COMMANDS:
        assert callable(command.add_parser)
        assert callable(command.run)
    args = parser.parse_args(["completion", "bash"])
    assert args.run is COMMANDS[-1].run


@pytest.mark.parametrize(
    ("argv", "level", "quiet"),
    [
        (["-q", "demo"], 0, True),
        (["demo", "-q"], 0, True),
        (["-v", "demo"], 1, False),
        (["demo", "-v"], 1, False),
        (["-v", "demo", "-v"], 2, False),
        (["demo", "-vv"], 2, False),
        (["demo", "--debug"], 2, False),
        (["--debug", "demo"], 2, False),
        (["demo"], 0, False),
    ],
)
def test_verbosity_options_work_before_and_after_the_command(
    argv: list[str], level: int, quiet: bool
) -> None:
    args = build_parser().parse_args(argv)
    assert (verbosity(args), args.quiet) == (level, quiet)


@pytest.mark.parametrize("where", ["before", "after"])
async def test_quiet_silences_fetch_wherever_it_is_given(
    market: RunningServer, tmp_path: Path, where: str
) -> None:
    source = write_csv(tmp_path / "ids.csv", [(1, 1)])
    args = fetch_args(market, tmp_path, source)
    run = await market_chat(*(["-q", *args] if where == "before" else [*args, "-q"]))
    assert run.status == 0, run.err
    assert run.err == ""


async def test_the_base_url_comes_from_the_environment_unless_given(
    market: RunningServer,
) -> None:
    assert BASE_URL_ENV == "YANDEX_MARKET_BASE_URL"
    ids = ["--business-id", str(BUSINESS), "--chat-id", "7", "--message-id", "8"]
    run = await market_chat("get", *ids, env=environment(**{BASE_URL_ENV: market.url}))
    assert run.status == 0, run.err
    assert json.loads(run.out)["messageId"] == 8
    assert market.server.stats.requests == 1

    nowhere = "http://127.0.0.1:9"  # the discard port: nobody answers
    run = await market_chat(
        "get", "--base-url", market.url, *ids, env=environment(**{BASE_URL_ENV: nowhere})
    )
    assert run.status == 0, run.err  # the option wins over the variable
    assert market.server.stats.requests == 2


async def test_serve_on_a_port_out_of_range_is_a_usage_error() -> None:
    run = await market_chat("serve", "--port", "99999")
    assert run.status == 2
    assert "Traceback" not in run.err
    assert "argument --port: expected a port from 0 to 65535, got '99999'" in run.err


async def test_one_message_is_written_in_the_singular(
    market: RunningServer, tmp_path: Path
) -> None:
    source = write_csv(tmp_path / "ids.csv", [(1, 1)])
    run = await market_chat(*fetch_args(market, tmp_path, source))
    assert run.status == 0, run.err
    assert "1 pair to fetch" in run.err
    assert f"1 message written to {tmp_path / 'messages.jsonl'}" in run.err


async def test_debug_logs_one_line_per_http_exchange_and_not_without_it(
    market: RunningServer,
) -> None:
    common = ["--base-url", market.url, "--business-id", str(BUSINESS), "--chat-id", "7"]
    exchange = re.compile(
        r"^market-chat: DEBUG: market_chat_async: GET /\S+ -> 200 in \d+\.\d+ s, quota left",
        re.M,
    )
    for flags in ([], ["-v"], ["-q"]):
        run = await market_chat("get", *common, "--message-id", "8", *flags)
        assert run.status == 0, run.err
        assert "DEBUG" not in run.err
    for flags in (["--debug"], ["-vv"], ["-v", "-v"]):
        run = await market_chat(*flags[:1], "get", *common, "--message-id", "8", *flags[1:])
        assert run.status == 0, run.err
        assert len(exchange.findall(run.err)) == 1, run.err
        assert API_KEY not in run.err
        assert "aiohttp" not in run.err  # the library's log, not the HTTP stack's


async def test_proxy_sends_the_requests_through_that_proxy(market: RunningServer) -> None:
    seen: list[str] = []

    async def forward(request: web.Request) -> web.Response:
        seen.append(str(request.url))
        async with (
            aiohttp.ClientSession() as session,
            session.request(request.method, request.url, headers=request.headers) as answer,
        ):
            return web.Response(
                status=answer.status,
                body=await answer.read(),
                headers={k: v for k, v in answer.headers.items() if k.lower().startswith("x-")},
                content_type=answer.content_type,
            )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        args = ["--base-url", market.url, "--business-id", str(BUSINESS), "--chat-id", "7"]
        run = await market_chat(
            "get", *args, "--message-id", "8", "--proxy", f"http://127.0.0.1:{port}"
        )
    finally:
        await runner.cleanup()
    assert run.status == 0, run.err
    assert json.loads(run.out)["messageId"] == 8
    assert len(seen) == 1
    assert seen[0].startswith(market.url)
    assert market.server.stats.requests == 1


# -- start-up cost ---------------------------------------------------------------------------


def _modules_after(code: str, *, bare_package: bool) -> set[str]:
    setup = (
        "import sys, types; pkg = types.ModuleType('market_chat_async'); "
        f"pkg.__path__ = [{str(Path(market_chat_async.__file__).parent)!r}]; "
        "sys.modules['market_chat_async'] = pkg; "
        if bare_package
        else "import sys; "
    )
    script = (
        setup
        + "from market_chat_async.cli import main\n"
        + "try:\n    main("
        + code
        + ")\nexcept SystemExit:\n    pass\n"
        + "print('\\n'.join(sys.modules), file=sys.stderr)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return set(done.stderr.split())


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["fetch", "--help"]])
def test_the_command_line_itself_imports_no_http_for_help_or_version(argv: list[str]) -> None:
    """What the cli package imports, the package's ``__init__`` bypassed."""
    loaded = _modules_after(repr(argv), bare_package=True)
    assert "market_chat_async.cli.parser" in loaded
    assert "aiohttp" not in loaded
    assert "market_chat_async._client" not in loaded


@pytest.mark.parametrize("argv", [["--version"], ["--help"]])
def test_market_chat_version_and_help_do_not_import_aiohttp(argv: list[str]) -> None:
    loaded = _modules_after(repr(argv), bare_package=False)
    assert "aiohttp" not in loaded


# -- shell completion ------------------------------------------------------------------------

needs_argcomplete = pytest.mark.skipif(
    importlib.util.find_spec("argcomplete") is None,
    reason="the completion extra (argcomplete) is not installed",
)


@needs_argcomplete
@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
async def test_completion_prints_a_script_for_each_shell(shell: str) -> None:
    run = await market_chat("completion", shell)
    assert run.status == 0, run.err
    assert "market-chat" in run.out
    assert "_ARGCOMPLETE" in run.out
    if shell == "fish":
        assert "complete --command market-chat" in run.out
    else:
        assert "_python_argcomplete" in run.out


def _complete(line: str, shell: str, tmp_path: Path) -> list[str]:
    """What ``market-chat`` answers a shell that asks to complete ``line``."""
    answer = tmp_path / "answer"
    env = environment(
        _ARGCOMPLETE="1",
        _ARGCOMPLETE_SHELL=shell,
        _ARGCOMPLETE_STDOUT_FILENAME=str(answer),
        _ARGCOMPLETE_IFS="\n",
        COMP_LINE=line,
        COMP_POINT=str(len(line)),
    )
    subprocess.run(
        [sys.executable, "-m", "market_chat_async.cli"],
        env=env,
        check=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return answer.read_text().split("\n")


@needs_argcomplete
@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_answers_from_the_parser(shell: str, tmp_path: Path) -> None:
    commands = [c.split("\t")[0].split(":")[0] for c in _complete("market-chat ", shell, tmp_path)]
    assert {"get", "fetch", "serve", "demo", "completion"} <= {c.strip() for c in commands}
    options = _complete("market-chat fetch --in", shell, tmp_path)
    assert [o.split("\t")[0].split(":")[0].strip() for o in options] == ["--input"]


@needs_argcomplete
def test_bash_completes_a_command_through_the_printed_script(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "market-chat"
    program.write_text(
        f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m market_chat_async.cli "$@"\n'
    )
    program.chmod(0o755)
    env = environment(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    script = (
        'eval "$(market-chat completion bash)"\n'
        "COMP_LINE='market-chat fe'; COMP_POINT=${#COMP_LINE}; COMP_WORDS=(market-chat fe);"
        " COMP_CWORD=1\n"
        "_python_argcomplete market-chat fe market-chat\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.split() == ["fetch"], done.stderr
