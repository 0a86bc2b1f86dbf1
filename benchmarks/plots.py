"""Render the benchmark plots the docs include, from ``benchmarks/results/*.json``.

Writes PNGs to ``docs/assets/``; each names the machine and date of the results it shows.
"""

from __future__ import annotations

import json
import sys
from itertools import accumulate
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
ASSETS = ROOT / "docs" / "assets"


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def caption(data: dict[str, Any]) -> str:
    m = data["machine"]
    return f"{data['benchmark']}.json, {data['date'][:10]}, {m['cpus']} CPUs, Python {m['python']}"


def limiter_plot(data: dict[str, Any]) -> None:
    sends = data["sends_unenforced"]
    minutes = range(1, len(sends["ours"]) + 1)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    naive = list(accumulate(sends["naive_token_bucket"]))
    ax.plot(minutes, naive, label="AsyncLimiter(1000, 3600)")
    ax.plot(minutes, list(accumulate(sends["ours"])), label="market-chat-async")
    hours = len(sends["ours"]) // 60
    quota = [data["limit"] * (1 + m // 60) for m in range(len(sends["ours"]))]
    ax.step(minutes, quota, where="post", linestyle="--", color="grey", label="quota per hour")
    ax.set_xlabel("minutes")
    ax.set_ylabel("requests sent (cumulative)")
    ax.set_title(f"Requests sent over {hours} h against a server enforcing nothing")
    ax.legend()
    fig.text(0.99, 0.01, caption(data), ha="right", fontsize=7, color="grey")
    fig.tight_layout()
    fig.savefig(ASSETS / "limiter.png", dpi=110)
    plt.close(fig)


def overhead_plot(data: dict[str, Any]) -> None:
    fig, ax = plt.subplots(figsize=(6, 3))
    labels = ["raw aiohttp", "MarketChatClient"]
    values = [data["raw_aiohttp_us_per_request"], data["client_us_per_request"]]
    ax.barh(labels, values, color=["grey", "tab:blue"])
    for y, v in enumerate(values):
        ax.text(v, y, f" {v:.0f} us", va="center")
    ax.set_xlabel("microseconds per request (sequential, local test server)")
    ax.set_xlim(0, max(values) * 1.25)
    fig.text(0.99, 0.01, caption(data), ha="right", fontsize=7, color="grey")
    fig.tight_layout()
    fig.savefig(ASSETS / "overhead.png", dpi=110)
    plt.close(fig)


def bulk_plot(data: dict[str, Any]) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (
        ("gather_peak_bytes_above_baseline", "asyncio.gather of get_message"),
        ("stream_peak_bytes_above_baseline", "stream_messages"),
        ("stream_peak_bytes_less_dedup_set", "stream_messages, less the set of fetched pairs"),
    ):
        series = data.get(key) or {}
        ns = sorted(int(n) for n in series)
        ax.plot(ns, [series[str(n)] / 1e6 for n in ns], marker="o", label=label)
    ax.set_xlabel("pairs (N)")
    ax.set_ylabel("peak memory above baseline (MB)")
    ax.set_title("Memory of bulk fetches versus N")
    ax.legend()
    fig.text(0.99, 0.01, caption(data), ha="right", fontsize=7, color="grey")
    fig.tight_layout()
    fig.savefig(ASSETS / "bulk_memory.png", dpi=110)
    plt.close(fig)


def summary() -> None:
    """The key numbers as a markdown table, for the docs' benchmarks page."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from report import table

    (RESULTS / "summary.md").write_text("\n".join(table()) + "\n")
    print("plots: wrote benchmarks/results/summary.md")


def main() -> None:
    ASSETS.mkdir(parents=True, exist_ok=True)
    summary()
    for name, plot in (("limiter", limiter_plot), ("overhead", overhead_plot), ("bulk", bulk_plot)):
        data = load(name)
        if data is None:
            print(f"plots: no {name}.json, skipped")
            continue
        plot(data)
        print(f"plots: wrote docs/assets/{name if name != 'bulk' else 'bulk_memory'}.png")


if __name__ == "__main__":
    main()
