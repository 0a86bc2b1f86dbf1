"""Shared plumbing for the benchmarks: where results go and what machine made them.

Every benchmark measures a ratio against a baseline taken in the same run (these machines are
shared and noisy), and writes ``benchmarks/results/<name>.json`` with the machine and the date,
so that every number the README and docs quote comes from a file.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What ran the benchmark."""
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    """Write one benchmark's results as JSON, stamped with the machine and the date."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **data,
    }
    path.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    print(
        f"{name}: wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}"
    )
    return path
