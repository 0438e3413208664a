"""The export corpus: every run recorded under tests/corpus/ (by this or an earlier perdure)
must replay against the workflows of tests/corpus/corpus_app.py, offline.

A failure here means this version cannot replay runs that an earlier one recorded: restore
compatibility, or (for a deliberate export format change) follow the migration procedure in
docs/change-safety.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import perdure
from perdure.testing import replay

sys.path.insert(0, str(Path(__file__).parent.parent / "corpus"))
import corpus_app

CORPUS = Path(__file__).parent.parent / "corpus"

EXPORTS = sorted(CORPUS.glob("*.json"))


def test_the_corpus_is_not_empty() -> None:
    assert len(EXPORTS) >= 5


@pytest.mark.parametrize("path", EXPORTS, ids=[p.stem for p in EXPORTS])
def test_every_recorded_run_replays(path: Path) -> None:
    name = json.loads(path.read_text())["workflow"]["name"]
    workflow = corpus_app.WORKFLOWS.get(name)
    assert workflow is not None, f"{path.name}: corpus_app.py has no workflow {name!r}"
    report = replay(path, workflow)
    assert report.finished and report.recorded_status is perdure.WorkflowStatus.SUCCESS
    steps = json.loads(path.read_text())["steps"]
    # every entry replayed (change markers are read, not replayed as steps)
    assert report.replayed == sum(1 for step in steps if step["name"] != "perdure.patched")
    assert report.call_changes == ()  # the recorded model calls match this code's
