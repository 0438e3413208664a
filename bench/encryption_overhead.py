"""Per-step cost of encryption at rest (``Engine(encryption=perdure.Encryption(...))``) on SQLite.

Run from the repository root::

    python bench/encryption_overhead.py [--steps 1000] [--repeat 7] [--dir PATH]

Two measurements:

* end to end: ``engine.run(workflow, steps)`` of a workflow of trivial steps, each returning
  a ~200-byte dict (a small tool result), with the engine already open, with and without
  encryption, ``durability="full"`` and ``"normal"``; a fresh database per run, one untimed
  warm-up run, repetitions interleaved across variants; median wall and CPU microseconds per
  step, and the difference. A step writes one encrypted entry and reads nothing back.
* the codec alone: sealing and unsealing one such journal row (``timeit``), which is what
  encryption adds to a step's write (and to each replayed entry's read).

Needs the ``crypto`` extra. Always exits 0: this is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Literal

import perdure
from perdure.store import StepRow, StepStatus
from perdure.store._blobs import FileBlobs
from perdure.store._codec import Codec

REPO = Path(__file__).resolve().parent.parent
ENCRYPTION = perdure.Encryption({"bench": os.urandom(32)})


@perdure.step(name="bench.tool")
def tool(i: int) -> dict[str, object]:
    return {"i": i, "title": "a search result", "url": "https://example.com/doc", "text": "x" * 120}


@perdure.workflow(name="bench.tools")
def tools(n: int) -> int:
    for i in range(n):
        tool(i)
    return n


Durability = Literal["full", "normal"]


def per_step(
    folder: Path, steps: int, durability: Durability, encrypted: bool
) -> tuple[float, float]:
    """(wall, CPU) microseconds per step of one timed run on a fresh database."""
    db = folder / f"{durability}-{encrypted}-{time.monotonic_ns()}.db"
    encryption = ENCRYPTION if encrypted else None
    with perdure.Engine(f"sqlite:///{db}", durability=durability,
                        encryption=encryption) as engine:  # fmt: skip
        engine.run(tools, steps, timeout=600)  # warm-up: grows the WAL file
        wall, cpu = time.perf_counter(), time.process_time()
        engine.run(tools, steps, timeout=600)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return wall / steps * 1e6, cpu / steps * 1e6


def codec_cost() -> tuple[float, float]:
    """Microseconds to seal and to unseal one journal row of a small tool result."""
    output = '{"i":7,"title":"a search result","url":"https://example.com/doc","text":"' + (
        "x" * 120 + '"}'
    )
    row = StepRow("wf-1", 7, "7", "bench.tool", StepStatus.SUCCESS, output, None, 0.0, 0.0)
    codec = Codec(FileBlobs(":memory:"), ENCRYPTION)
    sealed = codec.step_out(row)
    number = 20000
    seal = min(timeit.repeat(lambda: codec.step_out(row), number=number, repeat=5)) / number
    unseal = min(timeit.repeat(lambda: codec.step_in(sealed), number=number, repeat=5)) / number
    return seal * 1e6, unseal * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=REPO)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix=".bench-enc-", dir=args.dir))
    durabilities: tuple[Durability, ...] = ("full", "normal")
    variants = [(d, e) for d in durabilities for e in (False, True)]
    results: dict[tuple[Durability, bool], list[tuple[float, float]]] = {v: [] for v in variants}
    try:
        for r in range(args.repeat):
            for v in variants[r % len(variants) :] + variants[: r % len(variants)]:
                results[v].append(per_step(folder, args.steps, *v))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(
        f"{args.steps} steps per run, median of {args.repeat} runs, Python {sys.version.split()[0]}"
    )
    print(f"{'durability':<11}{'encryption':<12}{'wall µs/step':>14}{'CPU µs/step':>13}")
    for durability in ("full", "normal"):
        medians = {}
        for encrypted in (False, True):
            wall = statistics.median(w for w, _ in results[(durability, encrypted)])
            cpu = statistics.median(c for _, c in results[(durability, encrypted)])
            medians[encrypted] = (wall, cpu)
            print(f"{durability:<11}{'on' if encrypted else 'off':<12}{wall:>14.1f}{cpu:>13.1f}")
        wall_delta = medians[True][0] - medians[False][0]
        cpu_delta = medians[True][1] - medians[False][1]
        print(f"{durability:<11}{'difference':<12}{wall_delta:>+14.1f}{cpu_delta:>+13.1f}")
    seal, unseal = codec_cost()
    print(f"codec alone: seal a step row {seal:.1f} µs, unseal it {unseal:.1f} µs")


if __name__ == "__main__":
    main()
