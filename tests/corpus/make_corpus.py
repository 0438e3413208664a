"""Write the export corpus: one recorded run of each workflow of corpus_app.py, exported with
the current perdure as tests/corpus/<run id>.json. Files that exist are never overwritten:
they are what an earlier perdure recorded.

Run it (``.venv/bin/python tests/corpus/make_corpus.py``) only to add a run for a new
workflow, or when the export format changes; never to make an old file pass. A format change
is a new format version (``perdure.run/2``): keep the old files, teach ``load_export`` to
read them (or reject them with a clear error) and write the migration in
docs/change-safety.md.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import perdure
from perdure.testing import export_run

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "apps"))
import corpus_app
from fake_llm import FakeLLM

HERE = Path(__file__).parent
#: the recorded runs, by id (the file name); the suffix -7: recorded at schema version 7
RUNS = ("corpus-retried", "corpus-waits", "corpus-agent", "corpus-agent-7", "corpus-patched-7")


def main() -> None:
    """Record each corpus workflow once and write its export next to this file."""
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'corpus.db'}"
        with perdure.Engine(url, shutdown_grace=0.5) as engine:
            engine.run(corpus_app.retried, 21, id="corpus-retried", timeout=30)
            handle = engine.start(corpus_app.waits, 3, id="corpus-waits")
            while handle.status() is not perdure.WorkflowStatus.WAITING:
                time.sleep(0.01)
            engine.send("corpus-waits", "go", 4)
            handle.result(timeout=30)
            with FakeLLM(turns=2) as server:
                engine.run(corpus_app.agent, server.openai_url, id="corpus-agent", timeout=30)
            with FakeLLM(turns=2) as server:  # schema 7: model calls carry fingerprints
                engine.run(corpus_app.agent, server.openai_url, id="corpus-agent-7", timeout=30)
            engine.run(corpus_app.patched, 5, id="corpus-patched-7", timeout=30)
            for workflow_id in RUNS:
                path = HERE / f"{workflow_id}.json"
                if path.exists():
                    print(f"kept {path}")
                    continue
                document = export_run(engine.store, workflow_id)
                path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
                print(f"wrote {path}")


if __name__ == "__main__":
    main()
