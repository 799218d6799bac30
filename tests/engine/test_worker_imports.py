"""What a front-end worker imports: the gateway's app without the training libraries, which only
a fine-tuning job needs (in the model process, when one runs). transformers' trainer utilities
pull in PEFT: with them every worker held 338 MiB of private memory and took 5.5 s to import
the app, without them 204 MiB and 2.5 s (one worker per core by default). The workers and the
model process are forks of one template that imported it all (service/engine/template.py), so
that is what is checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_IMPORT_APP = """
import sys
import service.engine.template  # what every worker holds: it is a fork of the template
print(sorted(m for m in ("peft", "transformers.trainer_utils", "transformers.trainer") if m in sys.modules))
"""


def test_the_template_the_processes_are_forked_from_imports_no_training_library() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_APP], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[-2] == "[]"
