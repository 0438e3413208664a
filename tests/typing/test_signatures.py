"""Decorated functions keep their signatures for type checkers (checked with mypy)."""

from __future__ import annotations

import re
from pathlib import Path

from mypy import api

SNIPPET = """
import perdure

@perdure.step
def add(x: int, y: int) -> int:
    return x + y

@perdure.step(name="named")
async def fetch(url: str) -> bytes:
    return b""

@perdure.workflow
def flow(n: int) -> str:
    return str(add(n, 1))

@perdure.workflow(name="aflow")
async def aflow(url: str) -> bytes:
    return await fetch(url)

reveal_type(add(1, 2))
reveal_type(flow(1))
add("a", 2)
flow()

def use(engine: perdure.Engine) -> None:
    handle = engine.start(flow, 3, id="x")
    reveal_type(handle.result())
    reveal_type(engine.start(aflow, "u").result())
"""


def test_decorators_keep_signatures(tmp_path: Path) -> None:
    source = tmp_path / "snippet.py"
    source.write_text(SNIPPET)
    out, _err, _status = api.run(
        ["--strict", "--no-incremental", "--cache-dir", str(tmp_path / ".mypy"), str(source)]
    )
    expected = [
        r':20: note: Revealed type is "(builtins\.)?int"',
        r':21: note: Revealed type is "(builtins\.)?str"',
        r':22: error: Argument 1 to "(add|__call__" of "Step)" has incompatible type "str"; '
        r'expected "int"',
        r':23: error: Missing positional argument "n"',
        r':27: note: Revealed type is "(builtins\.)?str"',
        r':28: note: Revealed type is "(builtins\.)?bytes"',
    ]
    for pattern in expected:
        assert re.search(pattern, out), f"{pattern!r} not in mypy output:\n{out}"
    assert "Found 2 errors" in out, out
