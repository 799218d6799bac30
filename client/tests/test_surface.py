"""The public surface: AsyncClient mirrors Client, every public method says what it promises."""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import shlex
from pathlib import Path

import maas_client
from maas_client import AsyncClient, Client
from maas_client.cli import _parser

CLIENT_MODULES = {"maas_client.client", "maas_client.async_client"}


def _surface(client: object) -> dict[str, object]:
    """Public methods by dotted name: `predict`, `models.list`, `admin.keys.revoke`, ..."""
    found: dict[str, object] = {}

    def walk(obj: object, prefix: str) -> None:
        for name, value in vars(obj).items() if not inspect.isclass(obj) else []:
            if not name.startswith("_") and type(value).__module__ in CLIENT_MODULES:
                walk(value, f"{prefix}{name}.")
        for name, member in inspect.getmembers(type(obj), inspect.isfunction):
            if not name.startswith("_"):
                found[f"{prefix}{name}"] = member

    walk(client, "")
    return found


def test_async_client_has_the_same_methods_and_signatures_as_the_sync_one() -> None:
    sync, asynchronous = Client("http://x", "k"), AsyncClient("http://x", "k")
    sync_surface, async_surface = _surface(sync), _surface(asynchronous)
    assert set(sync_surface) == set(async_surface)
    assert {"predict", "embed", "models.list", "admin.tenants.suspend", "fine_tunes.wait"} <= set(
        sync_surface
    )
    for name, method in sync_surface.items():
        twin = async_surface[name]
        assert inspect.iscoroutinefunction(twin), name
        assert str(inspect.signature(method)) == str(inspect.signature(twin)), name  # type: ignore[arg-type]
        assert inspect.getdoc(method) and inspect.getdoc(twin), f"{name} has no docstring"
    sync.close()
    asyncio.run(asynchronous.close())


def test_every_exported_name_is_documented() -> None:
    for name in maas_client.__all__:
        value = getattr(maas_client, name)
        if inspect.isclass(value):
            assert inspect.getdoc(value), name


def _readme_calls() -> list[tuple[str, ast.Call]]:
    """Every call in the README's Python examples on a client (`client.…(…)`, `admin.…(…)`)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    calls = []
    for block in re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                chain, target = [], node.func
                while isinstance(target, ast.Attribute):
                    chain.append(target.attr)
                    target = target.value
                if isinstance(target, ast.Name) and target.id in ("client", "admin"):
                    calls.append((".".join(reversed(chain)), node))
    return calls


def test_every_client_call_in_the_readme_names_a_real_method_with_valid_arguments() -> None:
    calls = _readme_calls()
    assert len(calls) > 30  # the examples are found
    with Client("http://x", "k") as client:
        for path, node in calls:
            target: object = client
            for name in path.split("."):
                assert hasattr(target, name), f"README: {path}"
                target = getattr(target, name)
            positional = [None] * len(node.args)
            keywords = dict.fromkeys((k.arg for k in node.keywords if k.arg), None)
            try:
                inspect.signature(target).bind(*positional, **keywords)  # type: ignore[arg-type]
            except TypeError as exc:
                raise AssertionError(f"README: {path}({ast.unparse(node)}): {exc}") from None


def test_every_command_in_the_readme_parses() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["maas-client"]:
                commands.append(words[1:])
    assert len(commands) > 20  # the examples are found
    parser = _parser()
    for words in commands:
        try:
            parser.parse_args(words)
        except SystemExit:
            raise AssertionError(f"README: maas-client {shlex.join(words)}") from None
