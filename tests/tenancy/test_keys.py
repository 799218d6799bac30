"""API keys: their format, their hash, verification, and the admin key made at first start."""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import re
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from service.errors import PermissionDenied
from service.tenancy.bootstrap import AdminKey, bootstrap_admin_key
from service.tenancy.keys import generate_key, hash_key
from service.tenancy.keystore import AdminKeyStore
from service.tenancy.principal import Principal

URLSAFE = re.compile(r"^mk_[A-Za-z0-9_-]+$")


def test_generated_keys_are_prefixed_random_and_distinct() -> None:
    keys = [generate_key() for _ in range(200)]
    assert all(URLSAFE.match(key) for key in keys)
    # each URL-safe character carries 6 bits
    assert min(len(key) - len("mk_") for key in keys) * math.log2(64) >= 128
    assert len(set(keys)) == len(keys)


def test_hash_is_sha256_hex_and_not_the_key() -> None:
    key = generate_key()
    digest = hash_key(key)
    assert digest == hashlib.sha256(key.encode()).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{64}", digest) and key not in digest
    assert hash_key(key) == digest and hash_key(key + "x") != digest


def test_admin_store_accepts_only_its_key() -> None:
    key = generate_key()
    store = AdminKeyStore(key)
    principal = store.verify(key)
    assert principal is not None and principal.is_admin
    assert {"inference", "fine_tune", "admin"} <= principal.scopes
    for other in (generate_key(), key[:-1], key + " ", key.upper(), ""):
        assert store.verify(other) is None


def test_principal_scopes_and_model_limits() -> None:
    caller = Principal("key_1", "acme", frozenset({"inference"}), frozenset({"vit-base"}))
    caller.require_scope("inference")
    caller.require_model("vit-base")
    with pytest.raises(PermissionDenied, match="'fine_tune' scope"):
        caller.require_scope("fine_tune")
    with pytest.raises(PermissionDenied, match="'other'"):
        caller.require_model("other")
    admin = Principal("key_2", "acme", frozenset({"admin"}))
    admin.require_scope("fine_tune")  # admin implies every scope
    admin.require_model("anything")  # no model list: every model


def test_configured_admin_key_is_used_as_is_and_not_written(tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    admin = bootstrap_admin_key("mk_configured", data_dir)
    assert (admin.key, admin.path, admin.generated) == ("mk_configured", None, False)
    assert not data_dir.exists()


def test_first_start_generates_a_private_key_file_and_reuses_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "var"
    first = bootstrap_admin_key(None, data_dir)
    assert first.generated and URLSAFE.match(first.key)
    assert first.path == data_dir / "admin.key"
    assert first.path.read_text(encoding="utf-8").strip() == first.key
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600

    second = bootstrap_admin_key("", data_dir)  # an empty setting counts as none
    assert (second.key, second.path, second.generated) == (first.key, first.path, False)


def test_empty_key_file_is_replaced_once_no_writer_fills_it(tmp_path: Path) -> None:
    (tmp_path / "admin.key").write_text("\n")
    admin = bootstrap_admin_key(None, tmp_path, wait_s=0)
    assert admin.generated and (tmp_path / "admin.key").read_text().strip() == admin.key


def test_starts_racing_on_one_data_dir_agree_on_one_generated_key(tmp_path: Path) -> None:
    """Replicas starting together on a shared volume: one generates the key, all use that one."""
    starts = 8
    for attempt in range(20):  # many rounds: a race that is lost only sometimes still shows
        data_dir = tmp_path / f"round-{attempt}"
        together = threading.Barrier(starts)

        def start(data_dir: Path = data_dir, together: threading.Barrier = together) -> AdminKey:
            together.wait()
            return bootstrap_admin_key(None, data_dir)

        with ThreadPoolExecutor(starts) as pool:
            keys = list(pool.map(lambda _: start(), range(starts)))
        kept = (data_dir / "admin.key").read_text(encoding="utf-8").strip()
        assert {k.key for k in keys} == {kept}, attempt
        assert sum(k.generated for k in keys) == 1, attempt  # printed by exactly one start
        assert stat.S_IMODE((data_dir / "admin.key").stat().st_mode) == 0o600


def _start_in_process(data_dir: str, go: Any, answers: Any) -> None:
    go.wait()
    admin = bootstrap_admin_key(None, Path(data_dir))
    answers.put((admin.key, admin.generated))


def test_processes_racing_on_one_data_dir_agree_on_one_generated_key(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    for attempt in range(3):
        data_dir = tmp_path / f"round-{attempt}"
        go, answers = context.Event(), context.Queue()
        processes = [
            context.Process(target=_start_in_process, args=(str(data_dir), go, answers)) for _ in range(4)
        ]
        for process in processes:
            process.start()
        go.set()
        got = [answers.get(timeout=60) for _ in processes]
        for process in processes:
            process.join(timeout=60)
        kept = (data_dir / "admin.key").read_text(encoding="utf-8").strip()
        assert {key for key, _ in got} == {kept}, got
        assert sorted(generated for _, generated in got) == [False, False, False, True], got


def test_keys_are_redacted_from_log_records() -> None:
    import logging

    from service.redaction import RedactKeys

    key = generate_key()
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', ("1.2.3.4", "DELETE",
        f"/v1/admin/keys/{key}", "1.1", 400), None,
    )  # fmt: skip
    assert RedactKeys().filter(record)
    assert key not in record.getMessage() and "/v1/admin/keys/mk_[redacted]" in record.getMessage()
    assert isinstance(record.args, tuple) and len(record.args) == 5
