"""``market-chat fetch`` and the user's files: nothing destroyed, nothing lost, no tracebacks.

Each test runs the real command in a subprocess against the bundled server on a real port, and
uses real filesystem conditions: hard links, symlinks, ``/dev/full`` (every write fails with
ENOSPC) and a file-size limit (``RLIMIT_FSIZE``: a write that crosses it is cut short, the next
one fails), which is what a disk filling up mid-run does to a file.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
from pathlib import Path

import pytest

from market_chat_async.testing import RunningServer
from tests.test_cli import (
    BUSINESS,
    Run,
    environment,
    fetch_args,
    market_chat,
    pairs_in,
    read_jsonl,
    write_csv,
)

DEV_FULL = Path("/dev/full")
needs_dev_full = pytest.mark.skipif(not DEV_FULL.exists(), reason="no /dev/full here")


def assert_one_line_error(run: Run, status: int, *phrases: str) -> None:
    assert run.status == status, run.err
    assert "Traceback" not in run.err
    [line] = run.err.strip().splitlines()
    assert line.startswith("market-chat: error: ")
    for phrase in phrases:
        assert phrase in line


# -- the errors file never replaces the output or the input ---------------------------------


def _alias(kind: str, target: Path) -> Path:
    """Another name for ``target``."""
    if kind == "same path":
        return target
    if kind == "another spelling":
        return target.parent / "sub" / ".." / target.name
    alias = target.with_name("alias-" + target.name)
    if kind == "hard link":
        os.link(target, alias)
    else:
        alias.symlink_to(target)
    return alias


ALIASES = ["same path", "another spelling", "hard link", "symlink"]


@pytest.mark.parametrize("kind", ALIASES)
async def test_an_errors_file_that_is_the_output_is_refused_and_the_output_kept(
    market: RunningServer, tmp_path: Path, kind: str
) -> None:
    (tmp_path / "sub").mkdir()
    source = write_csv(tmp_path / "ids.csv", [(1, 1), (1, 2), (1, 3)])
    output = tmp_path / "messages.jsonl"
    first = await market_chat(*fetch_args(market, tmp_path, source))
    assert first.status == 0, first.err
    before = output.read_bytes()

    errors = _alias(kind, output)
    run = await market_chat(*fetch_args(market, tmp_path, source, "--errors", str(errors)))
    assert_one_line_error(run, 2, "--errors", "same file as --output", "erase the messages")
    assert output.read_bytes() == before
    assert market.server.stats.requests == 3  # the first run's only


@pytest.mark.parametrize("kind", ALIASES)
async def test_an_errors_file_that_is_the_input_is_refused_and_the_input_kept(
    market: RunningServer, tmp_path: Path, kind: str
) -> None:
    (tmp_path / "sub").mkdir()
    source = write_csv(tmp_path / "ids.csv", [(1, 1), (1, 2)])
    before = source.read_bytes()
    errors = _alias(kind, source)
    run = await market_chat(*fetch_args(market, tmp_path, source, "--errors", str(errors)))
    assert_one_line_error(run, 2, "same file as --input", "erase the input")
    assert source.read_bytes() == before
    assert not (tmp_path / "messages.jsonl").exists()
    assert market.server.stats.requests == 0


async def test_an_errors_file_not_yet_there_is_compared_by_its_resolved_path(
    market: RunningServer, tmp_path: Path
) -> None:
    (tmp_path / "sub").mkdir()
    source = write_csv(tmp_path / "ids.csv", [(1, 1)])
    errors = tmp_path / "sub" / ".." / "messages.jsonl"  # the output, which does not exist yet
    run = await market_chat(*fetch_args(market, tmp_path, source, "--errors", str(errors)))
    assert_one_line_error(run, 2, "same file as --output")
    assert not (tmp_path / "messages.jsonl").exists()


async def test_an_output_that_is_the_input_is_refused(
    market: RunningServer, tmp_path: Path
) -> None:
    source = tmp_path / "messages.jsonl"
    source.write_text('{"chatId": 1, "messageId": 2}\n')
    before = source.read_bytes()
    args = fetch_args(market, tmp_path, source, "--errors", str(tmp_path / "e.jsonl"))
    run = await market_chat(*args)
    assert_one_line_error(run, 2, "--output", "same file as --input")
    assert source.read_bytes() == before


# -- files that cannot be written ------------------------------------------------------------


async def test_an_errors_file_that_cannot_be_created_stops_before_any_request(
    market: RunningServer, tmp_path: Path
) -> None:
    source = write_csv(tmp_path / "ids.csv", [(1, 1)])
    errors = tmp_path / "no-such-dir" / "errors.jsonl"
    run = await market_chat(*fetch_args(market, tmp_path, source, "--errors", str(errors)))
    assert_one_line_error(run, 2, f"cannot write {errors}", "No such file or directory")
    assert market.server.stats.requests == 0


async def test_an_output_that_cannot_be_created_stops_before_any_request(
    market: RunningServer, tmp_path: Path
) -> None:
    source = write_csv(tmp_path / "ids.csv", [(1, 1)])
    output = tmp_path / "no-such-dir" / "messages.jsonl"
    args = fetch_args(market, tmp_path, source, "--errors", str(tmp_path / "e.jsonl"))
    args[args.index("--output") + 1] = str(output)
    run = await market_chat(*args)
    assert_one_line_error(run, 2, f"cannot write {output}")
    assert market.server.stats.requests == 0
    assert not (tmp_path / "e.jsonl").exists()


@needs_dev_full
async def test_a_full_disk_under_the_output_is_one_line_and_exit_1(
    market: RunningServer, tmp_path: Path
) -> None:
    source = write_csv(tmp_path / "ids.csv", [(1, 1), (1, 2)])
    args = fetch_args(market, tmp_path, source, "--errors", str(tmp_path / "e.jsonl"))
    args[args.index("--output") + 1] = str(DEV_FULL)
    run = await market_chat(*args, "-q")
    assert_one_line_error(run, 1, "cannot write /dev/full: No space left on device")


@needs_dev_full
async def test_a_full_disk_under_the_errors_file_is_one_line_and_exit_1(
    market: RunningServer, tmp_path: Path
) -> None:
    source = write_csv(tmp_path / "ids.csv", [(1, 1)], extra="1,x\n")
    args = fetch_args(market, tmp_path, source, "--errors", str(DEV_FULL))
    run = await market_chat(*args, "-q")
    assert run.status == 1
    assert "Traceback" not in run.err
    assert run.err.strip().splitlines()[-1] == (
        "market-chat: error: cannot write /dev/full: No space left on device"
    )


def _limit_file_size(limit: int) -> None:
    # CPython ignores SIGXFSZ, so crossing the limit is an EFBIG from write(2), as a full
    # disk is an ENOSPC: the write that crosses it is cut short, the next one fails.
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


async def test_a_disk_that_fills_up_mid_run_leaves_only_whole_lines_and_resumes_exactly(
    market: RunningServer, tmp_path: Path
) -> None:
    pairs = [(c, m) for c in (1, 2) for m in range(1, 31)]
    source = write_csv(tmp_path / "ids.csv", pairs)
    output = tmp_path / "messages.jsonl"
    args = fetch_args(market, tmp_path, source)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "market_chat_async.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment(),
        preexec_fn=lambda: _limit_file_size(4000),
    )
    _, err_bytes = await asyncio.wait_for(proc.communicate(), 30)
    err = err_bytes.decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    assert "error: cannot write" in err
    assert "File too large" in err
    assert "run the same command again to resume" in err
    text = output.read_text(encoding="utf-8")
    assert text.endswith("\n")  # the line that did not fit left no part of itself
    written = pairs_in(output)
    assert 0 < len(written) < len(pairs)
    assert f"{len(written)} new messages in {output}" in err

    again = await market_chat(*args)
    assert again.status == 0, again.err
    assert "cut off" not in again.err
    assert f"{len(pairs) - len(written)} pairs to fetch" in again.err
    final = pairs_in(output)
    assert len(final) == len(set(final)) == len(pairs)
    assert set(final) == set(pairs)


# -- stdin and stdout ------------------------------------------------------------------------


async def _market_chat_with_stdin(stdin: bytes, *args: str) -> Run:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "market_chat_async.cli",
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment(),
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 30)
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def test_dash_input_reads_the_pairs_from_stdin_in_order(
    market: RunningServer, tmp_path: Path
) -> None:
    stdin = b"chat_id,message_id\n1,3\n1,x\n1,1\n1,3\n2,2\n"
    args = fetch_args(market, tmp_path, Path("-"), "--max-parallel", "1")
    run = await _market_chat_with_stdin(stdin, *args)
    assert run.status == 1  # the bad row
    assert "<stdin>:3: bad row" in run.err
    assert pairs_in(tmp_path / "messages.jsonl") == [(1, 3), (1, 1), (2, 2)]
    [bad] = read_jsonl(tmp_path / "messages.jsonl.errors.jsonl")
    assert (bad["line"], bad["input"]) == (3, "1,x")

    again = await _market_chat_with_stdin(stdin.replace(b"1,x\n", b""), *args)
    assert again.status == 0, again.err
    assert "0 pairs to fetch (4 rows already in" in again.err  # resumed from the output file


async def test_dash_output_writes_json_lines_to_stdout_and_says_it_cannot_resume(
    market: RunningServer, tmp_path: Path
) -> None:
    source = write_csv(tmp_path / "ids.csv", [(1, 1), (1, 2)])
    errors = tmp_path / "errors.jsonl"
    args = fetch_args(market, tmp_path, source, "--errors", str(errors))
    args[args.index("--output") + 1] = "-"
    run = await market_chat(*args)
    assert run.status == 0, run.err
    lines = [json.loads(line) for line in run.out.splitlines()]
    assert sorted((line["chatId"], line["messageId"]) for line in lines) == [(1, 1), (1, 2)]
    assert "writing to stdout, so a rerun cannot resume" in run.err
    assert "2 messages written to stdout" in run.err
    assert not errors.exists()
    assert not (tmp_path / "-").exists()


async def test_dash_output_needs_an_errors_file(market: RunningServer, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "ids.csv", [(1, 1)])
    args = fetch_args(market, tmp_path, source)
    args[args.index("--output") + 1] = "-"
    run = await market_chat(*args)
    assert_one_line_error(run, 2, "with --output - (stdout), name the errors file with --errors")
    assert market.server.stats.requests == 0


# -- input rows the csv and json modules refuse ----------------------------------------------


async def test_a_row_nested_too_deep_is_a_bad_row_and_the_rest_is_fetched(
    market: RunningServer, tmp_path: Path
) -> None:
    deep = '{"chat_id": ' + "[" * 100_000 + "]" * 100_000 + ', "message_id": 1}'
    source = tmp_path / "ids.jsonl"
    source.write_text(
        f'{{"chat_id": 1, "message_id": 1}}\n{deep}\n{{"chatId": 1, "messageId": 2}}\n'
    )
    run = await market_chat(*fetch_args(market, tmp_path, source))
    assert run.status == 1, run.err
    assert "Traceback" not in run.err
    assert f"{source}:2: bad row (nested too deep)" in run.err
    assert sorted(pairs_in(tmp_path / "messages.jsonl")) == [(1, 1), (1, 2)]
    [bad] = read_jsonl(tmp_path / "messages.jsonl.errors.jsonl")
    assert bad["line"] == 2


async def test_a_csv_field_over_the_csv_limit_is_a_bad_row_with_its_line_number(
    market: RunningServer, tmp_path: Path
) -> None:
    source = write_csv(tmp_path / "ids.csv", [(1, 1)], extra="1," + "9" * 200_000 + "\n1,2\n")
    run = await market_chat(*fetch_args(market, tmp_path, source))
    assert run.status == 1, run.err
    assert "Traceback" not in run.err
    assert f"{source}:3: bad row (field larger than field limit" in run.err
    assert sorted(pairs_in(tmp_path / "messages.jsonl")) == [(1, 1), (1, 2)]
    [bad] = read_jsonl(tmp_path / "messages.jsonl.errors.jsonl")
    assert bad["line"] == 3
    assert bad["error"]["type"] == "BadRow"


async def test_every_run_rewrites_the_errors_file_and_removes_it_when_clean(
    market: RunningServer, tmp_path: Path
) -> None:
    market.server.not_found.add((BUSINESS, 1, 2))
    source = write_csv(tmp_path / "ids.csv", [(1, 1), (1, 2)])
    errors = tmp_path / "messages.jsonl.errors.jsonl"
    errors.write_text("stale line of an older run\n")
    run = await market_chat(*fetch_args(market, tmp_path, source))
    assert run.status == 1
    assert [e["messageId"] for e in read_jsonl(errors)] == [2]
    market.server.not_found.clear()
    run = await market_chat(*fetch_args(market, tmp_path, source))
    assert run.status == 0, run.err
    assert not errors.exists()


@needs_dev_full
@pytest.mark.parametrize("command", ["get", "history"])
async def test_a_full_stdout_is_one_line_and_exit_1(market: RunningServer, command: str) -> None:
    chat_id = market.server.add_chat(
        BUSINESS,
        messages=[
            {"messageId": 1, "createdAt": "2026-01-01T10:00:00Z", "sender": "CUSTOMER"},
        ],
    )
    args = ["--base-url", market.url, "--business-id", str(BUSINESS), "--chat-id", str(chat_id)]
    if command == "get":
        args += ["--message-id", "1"]
    full = os.open(DEV_FULL, os.O_WRONLY)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "market_chat_async.cli",
            command,
            *args,
            stdout=full,
            stderr=asyncio.subprocess.PIPE,
            env=environment(),
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        os.close(full)
    assert_one_line_error(
        Run(proc.returncode or 0, "", err.decode()),
        1,
        "cannot write stdout: No space left on device",
    )
