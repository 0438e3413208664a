"""``perdure worker --version/--compatible-version`` and ``perdure versions``: a worker of
another code version leaves a run alone (real worker processes), and the run is listed by
its version until a worker that can run it takes it."""

from __future__ import annotations

import json
import time
from pathlib import Path

from cli_helpers import run_cli
from test_operations_cli import Workers, _counts, _enqueue, _wait_for, client, workers

import perdure

__all__ = ["client", "workers"]  # fixtures, imported for pytest


def test_a_worker_of_another_version_leaves_the_run_and_versions_lists_it(
    workers: Workers, client: perdure.Engine, tmp_path: Path
) -> None:
    old = workers.start("--version", "v1")
    _enqueue(client, "ops_inbox", tmp_path, "inbox-v1")
    _wait_for(client, "inbox-v1", "WAITING")
    assert client.get_workflow("inbox-v1").version == "v1"  # stamped by the worker
    code, _, err = old.stop()
    assert code == 0, err

    listed = run_cli("versions", "--db", workers.url, "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == [{"name": "ops_inbox", "version": "v1", "unfinished": 1}]
    text = run_cli("versions", "--db", workers.url)
    assert text.stdout.splitlines()[1].split() == ["ops_inbox", "v1", "1"]

    newer = workers.start("--version", "v2")
    client.send("inbox-v1", "go", "now")
    time.sleep(2.5)  # past a recovery sweep (2 s) and many wake-up polls
    assert client.get_workflow("inbox-v1").status is perdure.WorkflowStatus.WAITING
    assert _counts(tmp_path) == {"waiting": 1}
    code, _, err = newer.stop()
    assert code == 0, err
    assert "started by code version 'v1'" in err  # the worker said why it left the run

    workers.start("--version", "v2", "--compatible-version", "v1")
    info = _wait_for(client, "inbox-v1", "SUCCESS")
    assert info.output == "now"
    assert _counts(tmp_path) == {"waiting": 1, "got": 1}
    assert run_cli("versions", "--db", workers.url).stdout == "no unfinished workflows\n"
