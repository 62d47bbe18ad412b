"""What a tool call costs beside a plain durable step, and what its policies add.

    .venv/bin/python bench/tools.py [--quick] [--json] [--sync full|normal] [--repeat 3]

Each measurement gets a fresh SQLite file in a temporary directory under bench/results/
(the same disk as the repository) and one run of N calls on an in-process worker, timed
from the run's `started_at` to its `finished_at` in the store, after a warm-up run. The
kinds take turns, `--repeat` rounds of them, and the table shows each one's median (this
machine's speed drifts from minute to minute):

  raw      bare sqlite3 single-row commits (the baseline, as `run.py`'s (a))
  steps    `await ctx.step(noop)`
  tool     `await ctx.tool("noop")`: allow-list check, a step named `tool:noop`
  rated    the same tool with `rate="1000000/s"`: a token taken from the shared bucket
           in the store before every call (never waits at that rate)
  guarded  the same tool with a CircuitBreaker: the breaker's state read and written in
           the store around every call

Progress goes to stderr; a Markdown table (or, with --json, the results) to stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULT_TIMEOUT, RESULTS, close_app, machine, markdown, progress, quiet_logging
from run import bench_raw, sqlite_url

import nonstop
from nonstop import CircuitBreaker

KINDS = ("steps", "tool", "rated", "guarded")


async def noop() -> None:
    """Does nothing: what is left is nonstop's own cost."""


def make_app(url: str) -> nonstop.App:
    """One agent per kind of call, each making `n` calls of that kind."""
    app = nonstop.App("bench-tools", url, version="bench")
    app.tool(name="noop")(noop)
    app.tool(name="rated", rate="1000000/s")(noop)
    app.tool(name="guarded", breaker=CircuitBreaker("bench", failure_threshold=5))(noop)

    @app.agent
    async def steps(ctx: nonstop.Context, n: int) -> int:
        for _ in range(n):
            await ctx.step(noop)
        return n

    def calling(tool: str) -> None:
        @app.agent(name=tool if tool != "noop" else "tool", tools=[tool])
        async def calls(ctx: nonstop.Context, n: int) -> int:
            for _ in range(n):
                await ctx.tool(tool)
            return n

    for tool in ("noop", "rated", "guarded"):
        calling(tool)
    return app


def bench_kind(path: Path, sync: str, kind: str, calls: int) -> dict[str, Any]:
    app = make_app(sqlite_url(path, sync))
    try:
        with app.worker(concurrency=10):
            app.run(kind, {"n": 50}, timeout=RESULT_TIMEOUT)  # warm-up: caches, pages
            handle = app.start(kind, {"n": calls})
            handle.result(RESULT_TIMEOUT)
            run = handle.get()
    finally:
        close_app(app)
    assert run.started_at is not None and run.finished_at is not None
    seconds = run.finished_at - run.started_at
    return {"calls": calls, "seconds": seconds, "per_s": calls / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke test")
    parser.add_argument("--sync", choices=("full", "normal"), default="full")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every kind")
    args = parser.parse_args(argv)
    calls = 200 if args.quick else 1000
    quiet_logging()
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"sync": args.sync, "machine": machine(), "kinds": {}}
    rounds: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory(dir=RESULTS) as tmp:
        progress(f"raw sqlite3 commits ({args.sync})")
        results["raw"] = bench_raw(Path(tmp) / "raw.db", args.sync, 2 * calls)
        for round_ in range(args.repeat):
            for kind in KINDS:
                progress(f"round {round_ + 1}: {kind}, one run of {calls} calls")
                path = Path(tmp) / f"{kind}-{round_}.db"
                rounds[kind].append(bench_kind(path, args.sync, kind, calls))
    for kind, found in rounds.items():
        rates = [r["per_s"] for r in found]
        results["kinds"][kind] = {"per_s": statistics.median(rates), "rounds": rates}
    raw = results["raw"]["commits_per_s"]
    steps = results["kinds"]["steps"]["per_s"]
    rows = [["raw sqlite3 commits", f"{raw:,.0f}", "1.00", ""]]
    for kind, found in results["kinds"].items():
        per_s = found["per_s"]
        rows.append([kind, f"{per_s:,.0f}", f"{per_s / raw:.2f}", f"{per_s / steps:.2f}"])
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(markdown(["calls/s", f"SQLite {args.sync}", "x raw", "x steps"], rows, numeric=3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
