"""``perdure export`` and ``perdure replay --check`` as a user runs them, in child processes:
a run recorded on SQLite is exported to a file, then checked against its own code (exit 0),
against edited code (exit 1, naming the position and both steps), and with a bad file or
module (exit 2); an unknown id exits 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import perdure

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "corpus"))
import corpus_app
from cli_helpers import one_error_line, run_cli

CORPUS_APP = str(Path(corpus_app.__file__).resolve())

EDITED_APP = """
import perdure

@perdure.step
def charge(amount: int) -> str:
    return f"charged {amount}"

@perdure.workflow(name="corpus_retried")
def retried(n: int) -> str:
    return charge(n)
"""


@pytest.fixture
def recorded(tmp_path: Path) -> str:
    """A SQLite database holding one finished run ``r1`` of ``corpus_retried``."""
    url = f"sqlite:///{tmp_path / 'perdure.db'}"
    corpus_app.failures_left[0] = 1
    with perdure.Engine(url, shutdown_grace=0.5) as engine:
        engine.run(corpus_app.retried, 4, id="r1", timeout=30)
    return url


def test_export_then_replay_check_passes(recorded: str, tmp_path: Path) -> None:
    done = run_cli("export", "r1", "--db", recorded)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["format"] == "perdure.run/1" and len(document["attempts"]) == 1
    path = tmp_path / "run.json"
    assert run_cli("export", "r1", "--db", recorded, "-o", str(path)).returncode == 0
    assert json.loads(path.read_text())["steps"] == document["steps"]
    done = run_cli("replay", "--check", str(path), "--app", CORPUS_APP)
    assert (done.returncode, done.stdout) == (0, "replayed 4 steps: compatible\n"), done.stderr
    done = run_cli("replay", "--check", str(path), "--app", CORPUS_APP, "--json")
    report = json.loads(done.stdout)
    assert (report["ok"], report["replayed"], report["finished"]) == (True, 4, True)


def test_an_incompatible_edit_exits_1_naming_the_position(recorded: str, tmp_path: Path) -> None:
    path = tmp_path / "run.json"
    run_cli("export", "r1", "--db", recorded, "-o", str(path))
    (tmp_path / "edited_app.py").write_text(EDITED_APP)
    done = run_cli("replay", "--check", str(path), "--app", str(tmp_path / "edited_app.py"))
    assert done.returncode == 1
    line = one_error_line(done)
    assert "position 0" in line and "'charge'" in line and "'flaky_fetch'" in line
    done = run_cli("replay", "--check", str(path), "--app", str(tmp_path / "edited_app.py"),
                   "--json")  # fmt: skip
    assert done.returncode == 1
    divergence = json.loads(done.stdout)["divergence"]
    assert (divergence["position"], divergence["recorded"], divergence["current"]) == (
        "0", "flaky_fetch", "charge",
    )  # fmt: skip


def test_bad_files_and_modules_exit_2(recorded: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "perdure.run/9"}')
    done = run_cli("replay", "--check", str(bad), "--app", CORPUS_APP)
    assert done.returncode == 2 and "unsupported export format" in one_error_line(done)
    done = run_cli("replay", "--check", str(tmp_path / "none.json"), "--app", CORPUS_APP)
    assert done.returncode == 2 and "cannot read export" in one_error_line(done)
    path = tmp_path / "run.json"
    run_cli("export", "r1", "--db", recorded, "-o", str(path))
    done = run_cli("replay", "--check", str(path), "--app", "no_such_module_here")
    assert done.returncode == 2
    (tmp_path / "empty_app.py").write_text("")
    done = run_cli("replay", "--check", str(path), "--app", str(tmp_path / "empty_app.py"))
    assert done.returncode == 2 and "no workflow named 'corpus_retried'" in one_error_line(done)


def test_exporting_an_unknown_id_exits_1(recorded: str) -> None:
    done = run_cli("export", "nope", "--db", recorded)
    assert done.returncode == 1 and "no workflow with id 'nope'" in one_error_line(done)
