"""The commands of the README, and of the docs pages that walk through the API, work as written
and in order on a fresh copy of the repository.

The copy holds what git holds (no `.venv`, no `var/`). `./run.sh serve`, the README's first
command, is started there in the background on a free port, and every other ```bash block of a
page runs in one bash script (```python blocks with the venv's Python), with `127.0.0.1:8000`
turned into that port. `curl` fails on an HTTP error, and any failing command fails the page. The
venv this test runs in is reused through MAAS_VENV, so `./run.sh` installs nothing; `maas` is not
on PATH. The one other stand-in: `./run.sh test` only collects the suite, not run it inside itself.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.e2e.conftest import Server, free_port, launch

pytestmark = pytest.mark.e2e
SERVE = "./run.sh serve"
STAND_INS = {"./run.sh test": "./run.sh test --collect-only -q"}
PAGES = {  # each page's commands, and what their output must show
    "README.md": ['"label":"3"', '"label":"7"', "tabby", '"cost_micro":100', "tests collected"],
    "docs/api.md": ["tabby, tabby cat"],
    "docs/tenants.md": ['"tenant":"globex"', "created tenant initech", "revoked key"],
    "docs/billing.md": ["tenant,tenant_id,model", '"object":"usage"'],
    "docs/fine-tuning.md": ['"status":"succeeded"', '"fine_tuned_model":"ft-digits-vit-', '"label":"7"'],
}
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", flags=re.MULTILINE | re.DOTALL)
PREAMBLE = """set -euo pipefail
curl() { command curl --fail-with-body --show-error "$@"; }  # an HTTP error fails the script
"""
SCRIPT_TIMEOUT_S = 240


def blocks(page: Path) -> list[tuple[str, str]]:
    """The page's ```bash and ```python blocks, in order: (language, code)."""
    return [(m[0], m[1]) for m in BLOCK.findall(page.read_text(encoding="utf-8"))]


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository as a fresh clone would have it, plus uncommitted changes."""
    venv = Path(sys.prefix)
    fingerprint = hashlib.sha256((REPO / "pyproject.toml").read_bytes() + (REPO / "run.sh").read_bytes())
    stamp = venv / ".maas-setup-test"
    if not stamp.is_file() or stamp.read_text().strip() != fingerprint.hexdigest():
        pytest.skip(f"{venv} is not set up by this run.sh and pyproject.toml: run ./run.sh setup test")
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to know the repository's files")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    copy = tmp_path_factory.mktemp("checkout")
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # a file deleted but not yet committed is gone from a clone too
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


@pytest.fixture(scope="module")
def gateway(checkout: Path) -> Iterator[Server]:
    """`./run.sh serve` in the copy, on a free port, reusing this venv."""
    first = blocks(checkout / "README.md")[0]
    assert first == ("bash", SERVE + "\n"), "the README starts with `./run.sh serve`, alone in its block"
    port = free_port()
    server = launch(
        [*SERVE.split(), "--port", str(port)], port, checkout / "var", env={"MAAS_VENV": sys.prefix}
    )
    yield server
    server.stop()


def script_of(page: Path, port: int) -> str:
    parts = [PREAMBLE]
    for language, code in blocks(page):
        if code.strip() == SERVE:
            continue  # running already, in the background
        code = STAND_INS.get(code.strip(), code)
        for line in code.splitlines():  # the whole suite, run inside itself, would never end
            assert line.split("#")[0].strip() not in STAND_INS, f"{page}: give `{line}` a block of its own"
        if language == "python":
            code = f"\"$MAAS_VENV/bin/python\" - <<'PYTHON'\n{code}PYTHON\n"
        parts.append(f"echo '### {page.name}: block {len(parts)}'\n{code}")
    assert len(parts) > 1, f"{page}: no commands found"
    script = "\n".join(parts)
    assert "localhost:8000" not in script, f"{page}: write http://127.0.0.1:8000, as everywhere"
    return script.replace("127.0.0.1:8000", f"127.0.0.1:{port}")


def shell_env() -> dict[str, str]:
    """A fresh shell's: the venv neither activated nor on PATH, no MAAS_* settings but MAAS_VENV."""
    venv_bin = Path(sys.prefix, "bin").resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_") and k != "VIRTUAL_ENV"}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != venv_bin]
    env.update({"PATH": os.pathsep.join(path), "MAAS_VENV": sys.prefix, "HF_HUB_OFFLINE": "1"})
    return env


@pytest.mark.parametrize("page", list(PAGES))
def test_the_commands_of_the_page_work_as_written(checkout: Path, gateway: Server, page: str) -> None:
    port = int(gateway.base_url.rsplit(":", 1)[1])
    script = checkout.parent / f"{page.replace('/', '-')}.sh"
    script.write_text(script_of(checkout / page, port), encoding="utf-8")
    ran = subprocess.run(
        ["bash", str(script)],
        cwd=checkout,
        env=shell_env(),
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT_S,
    )
    output = ran.stdout + ran.stderr
    log = gateway.log()[-4000:]
    assert ran.returncode == 0, f"{page}: a command failed:\n{output}\n--- the gateway's log ---\n{log}"
    missing = [text for text in PAGES[page] if text not in output]
    assert not missing, f"{page}: the output lacks {missing}:\n{output}"
