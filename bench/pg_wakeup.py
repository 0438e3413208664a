"""Cross-process wake-up latency on PostgreSQL: LISTEN/NOTIFY against the polling fallback.

Run from the repository root (PostgreSQL at 127.0.0.1:5432, user postgres, database test)::

    python bench/pg_wakeup.py [--n 100] [--url postgresql://postgres@127.0.0.1:5432/test]

A worker child process (this file with ``--worker``) opens an engine on a fresh schema and
serves the queue ``probe``. The parent, a client engine in another process, enqueues one
``probe`` workflow at a time: it receives a message, then a step records ``time.time()``.
Once the workflow is WAITING (unloaded: no thread holds it), the parent records
``time.time()`` and sends the message; latency = the step's time minus the send time. Each
probe is waited for to its end before the next, so this is latency, not throughput.

Variants, in one run, on the same database server:

* ``notify``: the engine's defaults (LISTEN/NOTIFY; the 1 s poll is only a fallback).
* ``poll 1 s``: the same worker with notifications switched off, which is what a worker
  would see with polling only at the PostgreSQL default of 1 s: the baseline.

Medians and 95th percentiles are printed, and the ratio baseline / notify. The exit status is
0 whatever the figures: this is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
import uuid

import psycopg

import perdure

PROBE = perdure.Queue("probe")


@perdure.step
def stamp() -> float:
    return time.time()


@perdure.workflow(name="wake_probe")
def wake_probe() -> float:
    perdure.receive("go")
    return stamp()


def worker(url: str, notify: bool) -> None:
    """Serve the probe queue until stdin closes."""
    if not notify:
        from perdure.store.postgres import PostgresStore

        PostgresStore.subscribe = lambda self, wake: False  # type: ignore[method-assign]
    with perdure.Engine(url, suspend_after=0.01, poll_interval=1.0):
        print("ready", flush=True)
        sys.stdin.read()


def measure(url: str, n: int, notify: bool) -> list[float]:
    """Latencies (seconds) of ``n`` probes served by a fresh worker process."""
    cmd = [sys.executable, __file__, "--worker", "--url", url]
    child = subprocess.Popen(
        cmd + ([] if notify else ["--no-notify"]), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline().strip() == "ready"
    latencies = []
    try:
        with perdure.Engine(url, recover=False) as client:
            for _ in range(n + 3):  # the first 3 warm up
                handle = client.enqueue(PROBE, wake_probe)
                while handle.status() is not perdure.WorkflowStatus.WAITING:
                    time.sleep(0.002)
                sent = time.time()
                client.send(handle.id, "go", True)
                latencies.append(handle.result(timeout=30) - sent)
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    return latencies[3:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=100, help="probes per variant")
    parser.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-notify", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.url, not args.no_notify)
        return
    schema = f"perdure_bench_{uuid.uuid4().hex[:12]}"
    url = f"{args.url}{'&' if '?' in args.url else '?'}schema={schema}"
    with psycopg.connect(args.url, autocommit=True) as conn:
        server = conn.execute("SHOW server_version").fetchone()
    try:
        notify = measure(url, args.n, notify=True)
        poll = measure(url, args.n, notify=False)
    finally:
        with psycopg.connect(args.url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    version = server[0] if server else "?"
    print(f"perdure {perdure.__version__}, PostgreSQL {version}, Python "
          f"{platform.python_version()}, {platform.machine()}, {time.strftime('%F')}")  # fmt: skip
    print(f"wake-up from send() in one process to the next step in another, n={args.n}")
    print(f"{'variant':<28}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}")
    for label, values in (("notify (default)", notify), ("poll 1 s (baseline)", poll)):
        ms = sorted(v * 1000 for v in values)
        p95 = ms[int(0.95 * (len(ms) - 1))]
        print(f"{label:<28}{statistics.median(ms):>10.1f}{p95:>10.1f}{ms[-1]:>10.1f}")
    ratio = statistics.median(poll) / statistics.median(notify)
    print(f"baseline / notify, p50: {ratio:.0f}x")


if __name__ == "__main__":
    main()
