"""Render what the docs show of the benchmarks, from ``benchmarks/results/*.json`` only.

Run by ``nox -s bench`` after the benchmarks (``python benchmarks/plots.py``). Writes:

* ``docs/assets/limiter.png``: requests sent over three simulated hours by this limiter and by a
  naive ``aiolimiter.AsyncLimiter(1000, 3600)``, against the quota (``limiter.json``);
* ``docs/assets/overhead.png``: time per request, this client against raw aiohttp
  (``overhead.json``);
* ``docs/assets/bulk_memory.png``: peak memory of streaming bulk fetches against ``gather``,
  versus the number of pairs (``bulk.json``; skipped with a message while it does not exist);
* ``docs/assets/export.png``: messages fetched over simulated time by each strategy, for known
  pairs and for the whole cabinet (``export.json``);
* ``docs/_snippets/benchmarks.md``: the key numbers as Markdown, one section per results file,
  each naming the machine and the date, for the docs' benchmarks page to include.

Every figure and number names the file, machine and date it comes from: nothing is typed by
hand. :func:`numbers_markdown` is a pure function of the results (``tests/test_docs.py`` checks
that the committed snippet is what the committed results give); matplotlib, a bench-only
dependency, is imported only to draw.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ASSETS = ROOT / "docs" / "assets"
SNIPPET = ROOT / "docs" / "_snippets" / "benchmarks.md"
NAMES = ("limiter", "overhead", "instructions", "acquire", "bulk", "redis", "export")

Results = dict[str, dict[str, Any]]


def load_results(folder: Path = RESULTS) -> Results:
    """Every results file there is, by benchmark name."""
    return {
        name: json.loads(path.read_text())
        for name in NAMES
        if (path := folder / f"{name}.json").exists()
    }


def stamp(data: dict[str, Any]) -> str:
    """Where a result comes from: file, date (UTC) and machine."""
    m = data["machine"]
    when = data["date"][:16].replace("T", " ")
    return (
        f"`benchmarks/results/{data['benchmark']}.json`, run {when} UTC on {m['platform']} "
        f"({m['cpus']} CPUs, {m['processor']}), Python {m['python']}"
    )


def _caption(data: dict[str, Any]) -> str:
    return stamp(data).replace("`", "")


def _fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


# -- numbers -------------------------------------------------------------------------------


def _last_busy_minute(per_minute: list[int]) -> int:
    return max((m + 1 for m, n in enumerate(per_minute) if n), default=0)


def _limiter_numbers(d: dict[str, Any]) -> list[str]:
    ours, naive, burst = d["ours"], d["naive_token_bucket"], d["burst"]
    sends = d["sends_unenforced"]
    naive_sends = sends["naive_token_bucket"]
    hour = round(d["period_s"] / 60)
    limit = d["limit"]
    return [
        f"Against the bundled test server enforcing {limit:,} requests per "
        f"{d['period_s']:g} s (fixed window) and 4 in flight, {d['latency_s'] * 1000:g} ms per "
        f"request, for {d['hours']} simulated hours:",
        "",
        "| | this limiter | naive `AsyncLimiter(1000, 3600)` |",
        "| --- | --- | --- |",
        f"| requests completed, of {ours['maximum_possible']:,} possible "
        f"| {ours['completed']:,} ({ours['utilisation']:.1%}) "
        f"| {naive['completed']:,} ({naive['utilisation']:.1%}) |",
        f"| quota 420s | {ours['quota_420']:,} | {naive['quota_420']:,} |",
        f"| parallel-cap 420s | {ours['parallel_420']:,} | {naive['parallel_420']:,} |",
        f"| most requests counted in any {d['period_s']:g} s "
        f"| {ours['max_in_any_hour']:,} | {naive['max_in_any_hour']:,} |",
        f"| sent in the first hour to a server enforcing nothing "
        f"| {sum(sends['ours'][:hour]):,} | {sum(sends['naive_token_bucket'][:hour]):,} |",
        "",
        f"To the server enforcing nothing, the naive bucket sent {sum(naive_sends):,} requests "
        f"by minute {_last_busy_minute(naive_sends)}, when the benchmark's work ran out; this "
        f"limiter sent {sum(sends['ours']):,}, {limit:,} per hour.",
        "",
        f"A burst of {burst['n']:,} requests on a fresh quota took {burst['seconds']:g} s; "
        f"the ideal, {burst['n']:,} x {burst['latency_s'] * 1000:g} ms / 4 in flight, is "
        f"{burst['ideal_seconds']:g} s (x{burst['ratio_to_ideal']:g}).",
    ]


def _overhead_numbers(d: dict[str, Any]) -> list[str]:
    return [
        f"Sequential `get_message` calls against the bundled test server in a process of its "
        f"own, which sends `Date` and `X-RateLimit-Resource-*` on every answer as the Market "
        f"does; this process's CPU time, {d['requests_per_round']:,} requests a side per round, "
        f"median of {d['rounds']} rounds, each timing both sides back to back:",
        "",
        "| | CPU µs per request |",
        "| --- | --- |",
        f"| raw aiohttp `GET` | {_fmt(d['raw_aiohttp_cpu_us_per_request'])} |",
        f"| `MarketChatClient.get_message` | {_fmt(d['client_cpu_us_per_request'])} |",
        f"| overhead (limiter, validation, decoding into models) "
        f"| {_fmt(d['overhead_cpu_us_per_request'])} (x{d['ratio']:g}) |",
        "",
        *(
            [
                f"The ratio is the median of the rounds' own ratios; half of the rounds fell "
                f"between x{q[0]:g} and x{q[1]:g}, which is how much CPU time moves on this "
                f"machine from one round to the next.",
                "",
            ]
            if (q := d.get("ratio_quartiles"))
            else []
        ),
        f"Start-up: `import market_chat_async` takes {_fmt(d['import_package_ms'])} ms "
        f"(the HTTP stack loads with the client: {_fmt(d['import_client_ms'])} ms), against "
        f"{_fmt(d['import_aiohttp_ms'])} ms for `import aiohttp`; `market-chat --version` "
        f"{_fmt(d['cli_version_ms'])} ms.",
    ]


def _instructions_numbers(d: dict[str, Any]) -> list[str]:
    raw = d["raw_instructions_per_request"]
    return [
        "The same calls counted in instructions by valgrind (the difference between "
        f"{d['requests'][0]:,} and {d['requests'][1]:,} requests, so start-up cancels out):",
        "",
        "| | instructions per request |",
        "| --- | --- |",
        f"| raw aiohttp `GET` | {raw:,} |",
        f"| floor: raw + headers read + body structured by cattrs "
        f"| {d['floor_instructions_per_request']:,} (x{d['floor_ratio']:g}) |",
        f"| `MarketChatClient.get_message` "
        f"| {d['client_instructions_per_request']:,} (x{d['client_ratio']:g}) |",
    ]


def _acquire_numbers(d: dict[str, Any]) -> list[str]:
    return [
        f"Taking and giving back a limiter slot with {d['waiters']:,} coroutines waiting, "
        f"median of {d['rounds']} rounds:",
        "",
        "| | µs per acquire |",
        "| --- | --- |",
        f"| this limiter | {_fmt(d['limiter_us_per_acquire'], 2)} (x{d['ratio']:g}) |",
        f"| `asyncio.Semaphore` | {_fmt(d['semaphore_us_per_acquire'], 2)} |",
    ]


def _bulk_numbers(d: dict[str, Any]) -> list[str]:
    stream = d["stream_peak_bytes_above_baseline"]
    gather = d["gather_peak_bytes_above_baseline"]
    rows = [
        f"| {int(n):,} | {stream[n] / 1e6:.1f} MB | "
        + (f"{gather[n] / 1e6:.1f} MB |" if n in gather else "not measured |")
        for n in sorted(stream, key=int)
    ]
    return [
        f"Server: {d['server']}. Client: {d['client']}.",
        "",
        "| | `stream_messages` | `gather` of `get_message` |",
        "| --- | --- | --- |",
        f"| µs per request ({d['time_pairs']:,} pairs, median of {d['time_rounds']} rounds) "
        f"| {_fmt(d['stream_us_per_request'])} (x{d['stream_vs_gather_time_ratio']:g}) "
        f"| {_fmt(d['gather_us_per_request'])} |",
        f"| peak memory per pair (slope) | {_fmt(d['stream_bytes_per_pair_slope'])} B "
        f"| {_fmt(d['gather_bytes_per_pair_slope'])} B |",
        "",
        f"Of the stream's bytes per pair, {_fmt(d['dedup_set_bytes_per_distinct_pair'])} are "
        "the set of pairs already fetched (what makes a repeated pair cost nothing); "
        "`dedupe=False` does without it.",
        "",
        "| pairs | `stream_messages`, peak above baseline | `gather`, peak above baseline |",
        "| --- | --- | --- |",
        *rows,
    ]


def _redis_numbers(d: dict[str, Any]) -> list[str]:
    return [
        f"The Redis store against a `redis-server` on localhost: sequential requests, each "
        f"{d['script_calls_per_request']:g} script call (the acquire carries the last request's "
        f"release), {d['requests_per_round']:,} per round, "
        f"median of {d['rounds']} rounds; then a fleet of {d['fleet_processes']} processes on "
        f"one cabinet for {d['fleet_seconds']:g} s:",
        "",
        "| | |",
        "| --- | --- |",
        f"| one bare `EVALSHA` | {_fmt(d['bare_evalsha_us'])} µs |",
        f"| the limiter, per request | {_fmt(d['us_per_request'])} µs "
        f"(x{d['ratio_to_bare_evalsha']:g}) |",
        f"| script calls per accepted request, fleet | "
        f"{d['fleet_script_calls_per_accepted_request']:g} |",
        f"| answers refused with 420, fleet | {d['fleet_quota_420'] + d['fleet_parallel_420']} |",
        f"| quota used, fleet | {d['fleet_quota_use']:.0%} |",
        f"| a killed worker's slots back after | {_fmt(d['dead_worker_slots_back_s'])} s "
        f"(leases of {d['lease_ttl_s']:g} s) |",
    ]


def _export_numbers(d: dict[str, Any]) -> list[str]:
    known, whole, inc = d["known_pairs"], d["whole_cabinet"], d["incremental"]
    export, slow = whole["export"], whole["one_by_one"]

    def requests(run: dict[str, Any]) -> str:
        return ", ".join(f"{n:,} {op}" for op, n in sorted(run["requests"].items()))

    def row(label: str, run: dict[str, Any]) -> str:
        return (
            f"| {label} | {_duration(run['seconds'])} | {requests(run)} "
            f"| {run['quota_420'] + run['parallel_420']} |"
        )

    peaks = d["memory"]["peak_bytes_by_messages"]
    least_key, most_key = min(peaks, key=int), max(peaks, key=int)
    least, most = int(least_key), int(most_key)
    return [
        f"{d['server'][:1].upper()}{d['server'][1:]}; {d['corpus']}.",
        "",
        f"Every message of {known['chats']} random chats ({known['message']['pairs']:,} known "
        "pairs, shuffled):",
        "",
        "| strategy | simulated time | requests | 420s |",
        "| --- | --- | --- | --- |",
        row('`"message"`', known["message"]),
        row('`"history"`', known["history"]),
        row('`"auto"`', known["auto"]),
        "",
        f'`"auto"` is {known["auto_speedup"]:,g} times faster than `"message"`.',
        "",
        f"The whole cabinet ({whole['export']['messages']:,} messages):",
        "",
        "| | simulated time | requests | 420s |",
        "| --- | --- | --- | --- |",
        row("`iter_all_messages`", export),
        row("every message one by one (ids known)", slow),
        "",
        f"The export made {export['requests_total']:,} requests, "
        f"x{export['requests_over_least']:g} "
        f"the least possible ({export['least_requests']:,}: the getChats pages and ceil(n / 100) "
        f"history pages per chat), in x{export['seconds_over_least']:g} the time those take at "
        f"4 in flight ({_duration(export['least_seconds'])}); {whole['speedup']:,g} times "
        "faster than one by one.",
        "",
        f"Rerun after {inc['changed_chats']} chats (1 %) got a new message "
        f"(`since=`, `after=`): {inc['requests_total']} requests "
        f"(x{inc['requests_over_least']:g} the least, {inc['least_requests']}), "
        f"{_duration(inc['seconds'])}.",
        "",
        "| messages exported | peak memory above baseline |",
        "| --- | --- |",
        *[
            f"| {int(n):,} | {b / 1e6:.2f} MB |"
            for n, b in sorted(peaks.items(), key=lambda x: int(x[0]))
        ],
        "",
        f"{d['memory']['server'].capitalize()}: {d['memory']['bytes_per_message_slope']:g} bytes "
        f"per message (slope): {most / least:.1f} times the messages, "
        f"{peaks[most_key] / peaks[least_key]:.2f} times the peak. No message is kept; what "
        "grows is the limiter's record of the last hour's requests (one float a request, "
        "bounded by the quota).",
    ]


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def _dedup_sentence(d: dict[str, Any] | None) -> list[str]:
    """The bulk page's sentence on what remembering the fetched pairs costs."""
    if d is None:
        text = "*No `bulk.json` yet: `nox -s bench` measures this.*"
    else:
        text = (
            f"Remembering the pairs fetched costs "
            f"{_fmt(d['dedup_set_bytes_per_distinct_pair'])} bytes per distinct pair, of the "
            f"{_fmt(d['stream_bytes_per_pair_slope'])} bytes per pair a stream takes in all "
            f"(`benchmarks/results/bulk.json`, {d['date'][:10]}); "
            "[more](benchmarks.md#memory-of-bulk-fetches)."
        )
    return ["<!-- --8<-- [start:bulk-dedup] -->", text, "<!-- --8<-- [end:bulk-dedup] -->", ""]


_NUMBERS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "limiter": _limiter_numbers,
    "overhead": _overhead_numbers,
    "instructions": _instructions_numbers,
    "acquire": _acquire_numbers,
    "bulk": _bulk_numbers,
    "redis": _redis_numbers,
    "export": _export_numbers,
}


def numbers_markdown(results: Results) -> str:
    """The snippet the benchmarks page includes: one section per benchmark."""
    out = [
        "<!-- Generated by benchmarks/plots.py from benchmarks/results/*.json; do not edit. -->",
        "",
    ]
    out.extend(_dedup_sentence(results.get("bulk")))
    for name in NAMES:
        out.append(f"<!-- --8<-- [start:{name}] -->")
        data = results.get(name)
        if data is None:
            out.append(f"*No `{name}.json` yet: `nox -s bench` writes it.*")
        else:
            out.extend(_NUMBERS[name](data))
            out.extend(["", f"<small>Source: {stamp(data)}.</small>"])
        out.extend([f"<!-- --8<-- [end:{name}] -->", ""])
    return "\n".join(out)


# -- plots ---------------------------------------------------------------------------------


def _figure(width: float, height: float, ncols: int = 1) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height), squeeze=False)


def _save(fig: Any, data: dict[str, Any], name: str) -> Path:
    import matplotlib.pyplot as plt

    fig.text(0.995, 0.01, _caption(data), ha="right", va="bottom", fontsize=7, color="dimgrey")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path = ASSETS / name
    fig.savefig(path, dpi=120, metadata={"Software": None})
    plt.close(fig)
    return path


def limiter_plot(d: dict[str, Any]) -> Path:
    """Cumulative sends against the fixed-window allowance, and sends in the trailing hour."""
    sends = d["sends_unenforced"]
    limit, hour = d["limit"], round(d["period_s"] / 60)
    ours, naive = sends["ours"], sends["naive_token_bucket"]
    minutes = list(range(len(ours) + 1))  # 0, then the end of each minute
    naive_label = f"naive AsyncLimiter({limit}, {d['period_s']:g})"
    ours_style = {"color": "tab:blue", "linewidth": 4, "alpha": 0.75, "label": "this limiter"}
    naive_style = {"color": "tab:red", "linewidth": 1.8, "label": naive_label}
    quota_style = {"color": "black", "linewidth": 1.2, "linestyle": "--", "zorder": 3}
    fig, axes = _figure(11, 4.6, ncols=2)
    left, right = axes[0]

    naive_total = [0, *accumulate(naive)]
    allowed = [limit * (1 + max(m - 1, 0) // hour) for m in minutes]
    left.plot(minutes, naive_total, **naive_style)
    left.plot(minutes, [0, *accumulate(ours)], **ours_style)
    left.plot(minutes, allowed, **quota_style, label=f"quota: {limit:,} per hour window")
    left.fill_between(
        minutes,
        allowed,
        naive_total,
        where=[n > a for n, a in zip(naive_total, allowed, strict=True)],
        color="tab:red",
        alpha=0.15,
        label="naive bucket over the quota",
    )
    left.set_title("Requests sent, cumulative")
    left.set_ylabel("requests")
    left.legend(loc="upper left", fontsize=8)

    def trailing(series: list[int]) -> list[int]:
        return [sum(series[max(0, m - hour) : m]) for m in minutes[1:]]

    right.plot(minutes[1:], trailing(naive), **naive_style)
    right.plot(minutes[1:], trailing(ours), **ours_style)
    right.axhline(limit, **quota_style, label=f"quota: {limit:,}")
    right.set_title("Requests sent in the trailing hour (a sliding window)")
    right.set_ylabel("requests in the last 60 minutes")
    right.set_ylim(0, max(trailing(naive)) * 1.2)
    right.legend(loc="upper right", fontsize=8)

    for ax in (left, right):
        ax.set_xlim(0, minutes[-1])
        ax.set_xticks(range(0, minutes[-1] + 1, hour))
        ax.set_xlabel("minutes")
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"What each limiter sends to a server that enforces nothing, "
        f"over {d['hours']} simulated hours",
        fontsize=11,
    )
    return _save(fig, d, "limiter.png")


def overhead_plot(d: dict[str, Any]) -> Path:
    """Time per request: raw aiohttp against the client."""
    fig, axes = _figure(7.5, 2.8)
    ax = axes[0][0]
    labels = ["raw aiohttp GET", "MarketChatClient.get_message"]
    values = [d["raw_aiohttp_cpu_us_per_request"], d["client_cpu_us_per_request"]]
    ax.barh(labels, values, color=["tab:grey", "tab:blue"])
    for y, value in enumerate(values):
        ax.text(value, y, f"  {value:,.1f} µs", va="center")
    ax.invert_yaxis()
    ax.set_xlim(0, max(values) * 1.3)
    ax.set_xlabel("CPU µs per request, sequential, test server in its own process")
    ax.set_title(
        f"Client overhead: +{d['overhead_cpu_us_per_request']:,.1f} µs CPU per request "
        f"(x{d['ratio']:g})",
        fontsize=11,
    )
    return _save(fig, d, "overhead.png")


def bulk_memory_plot(d: dict[str, Any]) -> Path:
    """Peak memory above baseline versus the number of pairs."""
    fig, axes = _figure(7.5, 4.4)
    ax = axes[0][0]
    series = (
        ("gather_peak_bytes_above_baseline", "asyncio.gather of get_message", "tab:red"),
        ("stream_peak_bytes_above_baseline", "stream_messages", "tab:blue"),
        (
            "stream_peak_bytes_less_dedup_set",
            "stream_messages, less the set of pairs fetched",
            "tab:cyan",
        ),
    )
    for key, label, color in series:
        points = sorted((int(n), b) for n, b in (d.get(key) or {}).items())
        if points:
            ax.plot(
                [n for n, _ in points],
                [b / 1e6 for _, b in points],
                marker="o",
                color=color,
                label=label,
            )
    ax.set_xlabel("pairs fetched (N)")
    ax.set_ylabel("peak traced memory above baseline (MB)")
    ax.set_title(
        f"Bulk fetch memory: {d['stream_bytes_per_pair_slope']:,.1f} B per pair streaming, "
        f"{d['gather_bytes_per_pair_slope']:,.1f} B with gather",
        fontsize=11,
    )
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, d, "bulk_memory.png")


def export_plot(d: dict[str, Any]) -> Path:
    """Messages fetched over simulated time: known pairs by strategy; the whole cabinet."""
    fig, axes = _figure(11, 4.6, ncols=2)
    left, right = axes[0]
    known, whole = d["known_pairs"], d["whole_cabinet"]
    styles: dict[str, dict[str, Any]] = {
        "message": {"color": "tab:red", "label": '"message" (getChatMessage each)'},
        "history": {"color": "tab:green", "linestyle": "--", "label": '"history"'},
        "auto": {"color": "tab:blue", "linewidth": 3, "alpha": 0.6, "label": '"auto"'},
    }
    for strategy, style in styles.items():
        run = known[strategy]
        t, n = zip(*run["timeline"], strict=True)
        label = (
            f"{style.pop('label')}: {_duration(run['seconds'])}, {run['requests_total']:,} requests"
        )
        left.plot(t, n, label=label, **style)
    left.set_title(
        f"Known pairs: every message of {known['chats']} chats ({known['message']['pairs']:,})",
        fontsize=10,
    )
    for key, color, label in (
        ("one_by_one", "tab:red", "every message one by one"),
        ("export", "tab:blue", "iter_all_messages"),
    ):
        run = whole[key]
        t, n = zip(*run["timeline"], strict=True)
        right.plot(t, n, color=color, label=f"{label}: {_duration(run['seconds'])}")
    right.set_title(f"Whole cabinet ({whole['export']['messages']:,} messages)", fontsize=10)
    for ax in (left, right):
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("simulated seconds (log scale past 1 s)")
        ax.set_ylabel("messages fetched")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(
        "Messages fetched over simulated time, documented quotas, 4 in flight, "
        f"{d['latency_s'] * 1000:g} ms per request",
        fontsize=11,
    )
    return _save(fig, d, "export.png")


_PLOTS: dict[str, Callable[[dict[str, Any]], Path]] = {
    "limiter": limiter_plot,
    "overhead": overhead_plot,
    "bulk": bulk_memory_plot,
    "export": export_plot,
}


def main() -> None:
    results = load_results()
    ASSETS.mkdir(parents=True, exist_ok=True)
    for name, plot in _PLOTS.items():
        if name not in results:
            print(f"plots: no benchmarks/results/{name}.json yet, {name} plot skipped")
            continue
        print(f"plots: wrote {plot(results[name]).relative_to(ROOT)}")
    SNIPPET.parent.mkdir(parents=True, exist_ok=True)
    SNIPPET.write_text(numbers_markdown(results))
    print(f"plots: wrote {SNIPPET.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
