"""The `maas-client` command as a user runs it: `python -m maas_client …` in a subprocess against the
real `maas serve` process, checking exit status, stdout and stderr."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ADMIN_KEY, png, unique
from maas_client import Client

from tests.e2e.conftest import Server
from tests.training.zips import build_zip, colour_dataset

pytestmark = pytest.mark.e2e
POLL_S = "0.2"  # how often follow asks; the job's own pace decides how long it takes


def cli(gateway: Server, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m maas_client ARGS` with MAAS_BASE_URL and MAAS_API_KEY set, as a shell would."""
    env = {**os.environ, "MAAS_BASE_URL": gateway.base_url, "MAAS_API_KEY": key}
    return subprocess.run(
        [sys.executable, "-m", "maas_client", *args], env=env, capture_output=True, text=True, timeout=300
    )


def default_sigint() -> None:
    """In the child before exec: Ctrl-C handled as in a terminal, however the suite was started
    (`&`, `nohup` and some CI runners start it with SIGINT ignored, which children inherit)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    """stdout of a command that must have succeeded quietly."""
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout


def refused(done: subprocess.CompletedProcess[str], status: str) -> str:
    """stderr of a command the gateway refused: exit 1, nothing on stdout, the error and its
    request id on stderr."""
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert done.stderr.startswith(f"maas-client: {status}") and "(request req_" in done.stderr, done.stderr
    return done.stderr


def fields(stdout: str) -> dict[str, str]:
    """The `name: value` lines of a single object."""
    pairs = (line.split(":", 1) for line in stdout.splitlines() if ":" in line)
    return {name: value.strip() for name, value in pairs}


def table(stdout: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of a table whose cells hold no spaces."""
    header, *rows = stdout.splitlines()
    return header.split(), [row.split() for row in rows]


def new_tenant(gateway: Server, prefix: str) -> tuple[str, str]:
    """A new tenant's name and a key of it (default scopes), made with the SDK."""
    name = unique(prefix)
    with Client(gateway.base_url, ADMIN_KEY) as admin:
        admin.admin.tenants.create(name)
        key = admin.admin.keys.create(name).key
    assert key
    return name, key


def test_admin_creates_a_tenant_and_a_key_that_works_until_revoked(gateway: Server) -> None:
    name = unique("cli-acme")
    created = fields(
        ok(cli(gateway, ADMIN_KEY, "admin", "tenants", "create", name, "--rps", "50", "--quota", "1000"))
    )
    assert created["name"] == name and created["status"] == "active"
    assert (created["rps"], created["quota"], created["concurrency"]) == ("50.0", "1000", "-")
    assert "409 conflict" in refused(cli(gateway, ADMIN_KEY, "admin", "tenants", "create", name), "409")

    header, rows = table(ok(cli(gateway, ADMIN_KEY, "admin", "tenants", "list")))
    assert header == ["NAME", "ID", "STATUS", "RPS", "CONCURRENCY", "QUOTA", "MODELS", "CREATED_AT"]
    (mine,) = [row for row in rows if row[0] == name]
    assert mine[1] == created["id"] and mine[2:7] == ["active", "50.0", "-", "1000", "-"]
    listed = json.loads(ok(cli(gateway, ADMIN_KEY, "admin", "tenants", "list", "--json")))
    assert [t["monthly_quota_inputs"] for t in listed if t["name"] == name] == [1000]

    shown = ok(
        cli(gateway, ADMIN_KEY, "admin", "keys", "create", name, "--name", "ci", "--models", "tiny-vit")
    )
    *described, warning, secret = shown.splitlines()
    assert secret.startswith("mk_") and "shown only this once" in warning
    key = fields("\n".join(described))
    assert key["id"].startswith("key_") and key["tenant"] == name and key["name"] == "ci"
    assert (
        key["scopes"] == "fine_tune,inference"
        and key["models"] == "tiny-vit"
        and secret.startswith(key["prefix"])
    )

    models = ok(cli(gateway, secret, "models"))
    assert models.split()[0] == "tiny-vit"
    header, rows = table(ok(cli(gateway, ADMIN_KEY, "admin", "keys", "list", name)))
    assert header[:3] == ["ID", "NAME", "PREFIX"] and [row[:3] for row in rows] == [
        [key["id"], "ci", key["prefix"]]
    ]
    assert rows[0][6] == "-" and rows[0][7] != "-"  # not revoked; just used
    assert secret not in ok(cli(gateway, ADMIN_KEY, "admin", "keys", "list", name, "--json"))

    revoked = fields(ok(cli(gateway, ADMIN_KEY, "admin", "keys", "revoke", key["id"])))
    assert revoked["id"] == key["id"] and revoked["revoked_at"] != "-"
    assert "authentication_error" in refused(cli(gateway, secret, "models"), "401")
    refused(cli(gateway, ADMIN_KEY, "admin", "keys", "revoke", "key_nope"), "404 not_found")
    refused(cli(gateway, ADMIN_KEY, "admin", "keys", "list", unique("nobody")), "404 not_found")

    other = json.loads(ok(cli(gateway, ADMIN_KEY, "admin", "keys", "create", name, "--json")))
    assert other["key"].startswith("mk_") and other["tenant"] == name
    refused(cli(gateway, other["key"], "admin", "tenants", "list"), "403 permission_denied")
    refused(cli(gateway, other["key"], "admin", "keys", "create", name), "403 permission_denied")


def test_usage_and_billing_export_from_the_shell(gateway: Server, tmp_path: Path) -> None:
    name, key = new_tenant(gateway, "cli-billed")
    with Client(gateway.base_url, key) as client:
        assert client.predict("tiny-vit", [png(), png((0, 0, 200)), png((0, 200, 0))]).usage.inputs == 3

    shown = ok(cli(gateway, key, "usage", "--group-by", "model"))
    header, rows = table(shown)
    assert header == ["MODEL", "KIND", "REQUESTS", "ERRORS", "INPUTS", "COMPUTE_S", "COST"]
    (row, total) = rows
    assert row[:5] == ["tiny-vit", "inference", "1", "0", "3"] and row[6] == "0.003000"
    assert total[:3] == ["total", "cost", "0.003000"]
    report = json.loads(ok(cli(gateway, key, "usage", "--json")))
    assert report["total_cost"] == "0.003000" and report["data"][0]["inputs"] == 3
    refused(cli(gateway, key, "usage", "--group-by", "colour"), "422 invalid_input")
    refused(cli(gateway, key, "usage", "--start", "2026-02-01", "--end", "2026-01-01"), "422 invalid_input")

    header, rows = table(
        ok(cli(gateway, ADMIN_KEY, "admin", "usage", "--tenant", name, "--group-by", "tenant,model"))
    )
    assert header[:3] == ["TENANT", "MODEL", "KIND"] and rows[0][:6] == [
        name,
        "tiny-vit",
        "inference",
        "1",
        "0",
        "3",
    ]
    assert (
        json.loads(ok(cli(gateway, ADMIN_KEY, "admin", "usage", "--tenant", name, "--json")))[
            "total_cost_micro"
        ]
        == 3000
    )
    refused(cli(gateway, key, "admin", "usage"), "403 permission_denied")

    period = report["start"][:7]  # the gateway's own month, so the test holds at a month's turn too
    header, rows = table(ok(cli(gateway, ADMIN_KEY, "admin", "billing-export", period)))
    assert header == ["TENANT", "MODEL", "KIND", "REQUESTS", "INPUTS", "UNIT_PRICE", "AMOUNT"]
    assert [r for r in rows if r[0] == name] == [
        [name, "tiny-vit", "inference", "1", "3", "0.001000", "0.003000"]
    ]
    assert rows[-1][0] == "total" and rows[-1][-1] == period

    target = tmp_path / "invoice.csv"
    assert ok(cli(gateway, ADMIN_KEY, "admin", "billing-export", period, "-o", str(target))) == (
        f"wrote the {period} billing export (csv) to {target}\n"
    )
    lines = [
        line
        for line in csv.DictReader(target.read_text(encoding="utf-8").splitlines())
        if line["tenant"] == name
    ]
    assert [(line["model"], line["inputs"], line["amount"]) for line in lines] == [
        ("tiny-vit", "3", "0.003000")
    ]
    as_csv = ok(cli(gateway, ADMIN_KEY, "admin", "billing-export", period, "--format", "csv"))
    assert as_csv.splitlines()[0].startswith("tenant,tenant_id,model,")
    export = json.loads(ok(cli(gateway, ADMIN_KEY, "admin", "billing-export", period, "--json")))
    assert export["period"] == period and name in {line["tenant"] for line in export["lines"]}

    refused(cli(gateway, ADMIN_KEY, "admin", "billing-export", "2026-13"), "422")
    refused(cli(gateway, key, "admin", "billing-export", period), "403 permission_denied")
    unwritable = cli(
        gateway, ADMIN_KEY, "admin", "billing-export", period, "-o", str(tmp_path / "no" / "x.csv")
    )
    assert (
        unwritable.returncode == 2 and unwritable.stderr.startswith("maas-client: ") and not unwritable.stdout
    )


def test_files_and_fine_tunes_from_the_shell(gateway: Server, tmp_path: Path) -> None:
    _, key = new_tenant(gateway, "cli-tuner")
    dataset = tmp_path / "colours.zip"
    dataset.write_bytes(colour_dataset(per_label=6))
    uploaded = fields(ok(cli(gateway, key, "files", "upload", str(dataset))))
    file_id = uploaded["id"]
    assert file_id.startswith("file_") and uploaded["filename"] == "colours.zip"
    assert (uploaded["labels"], uploaded["examples"], uploaded["bytes"]) == (
        "blue,red",
        "12",
        str(dataset.stat().st_size),
    )
    missing = cli(gateway, key, "files", "upload", str(tmp_path / "missing.zip"))
    assert missing.returncode == 2 and "missing.zip" in missing.stderr and not missing.stdout
    one_label = tmp_path / "one-label.zip"
    one_label.write_bytes(build_zip({f"red/{i}.png": png() for i in range(6)}))
    refused(cli(gateway, key, "files", "upload", str(one_label)), "422 invalid_input")

    spare = json.loads(ok(cli(gateway, key, "files", "upload", str(dataset), "--json")))
    header, rows = table(ok(cli(gateway, key, "files", "list")))
    assert header[:4] == ["ID", "FILENAME", "BYTES", "LABELS"] and {r[0] for r in rows} == {
        file_id,
        spare["id"],
    }
    assert ok(cli(gateway, key, "files", "delete", spare["id"])) == f"deleted {spare['id']}\n"
    refused(cli(gateway, key, "files", "delete", spare["id"]), "404 not_found")
    assert [f["id"] for f in json.loads(ok(cli(gateway, key, "files", "list", "--json")))] == [file_id]

    hyper = ["--epochs", "2", "--batch-size", "4", "--learning-rate", "0.01"]
    lora = ["--method", "lora", "--lora-rank", "4", "--priority", "high", "--suffix", "shell"]
    followed = ok(
        cli(
            gateway,
            key,
            "fine-tunes",
            "create",
            "tiny-vit",
            file_id,
            *hyper,
            *lora,
            "--follow",
            "--interval",
            POLL_S,
        )
    )
    *stream, last = followed.splitlines()
    summary = json.loads(last)
    job_id = summary["id"]
    assert summary["status"] == "succeeded" and (summary["method"], summary["priority"]) == ("lora", "high")
    assert summary["hyperparameters"]["epochs"] == 2 and summary["hyperparameters"]["lora_rank"] == 4
    assert stream[0] in (f"[{job_id}] queued", f"[{job_id}] running")  # the id first, at once
    assert any(line.endswith(" job queued") for line in stream)
    assert stream[-1] == f"[{job_id}] succeeded" and "shell" in summary["fine_tuned_model"]

    job = fields(ok(cli(gateway, key, "fine-tunes", "get", job_id)))
    assert (job["status"], job["epochs"], job["method"]) == ("succeeded", "2/2", "lora")
    assert job["fine_tuned_model"] == summary["fine_tuned_model"] and "validation_accuracy" in job
    header, rows = table(ok(cli(gateway, key, "fine-tunes", "list")))
    assert header[:3] == ["ID", "STATUS", "BASE_MODEL"] and [r[:5] for r in rows] == [
        [job_id, "succeeded", "tiny-vit", "lora", "high"]
    ]
    events = ok(cli(gateway, key, "fine-tunes", "events", job_id)).splitlines()
    assert events[0].split() == ["CREATED_AT", "TYPE", "MESSAGE"]
    assert [line.split()[1] for line in events[1:]].count("epoch") == 2
    raw_events = json.loads(ok(cli(gateway, key, "fine-tunes", "events", job_id, "--json")))
    assert [e["data"]["status"] for e in raw_events if e["type"] == "status"] == [
        "queued",
        "running",
        "succeeded",
    ]
    refused(cli(gateway, key, "fine-tunes", "cancel", job_id), "409 conflict")

    long = fields(ok(cli(gateway, key, "fine-tunes", "create", "tiny-vit", file_id, "--epochs", "1000")))
    assert (
        long["status"] in ("queued", "running") and long["method"] == "full" and long["priority"] == "normal"
    )
    env = {**os.environ, "MAAS_BASE_URL": gateway.base_url, "MAAS_API_KEY": key}
    following = subprocess.Popen(
        [sys.executable, "-m", "maas_client", "fine-tunes", "follow", long["id"], "--interval", POLL_S],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=default_sigint,
    )
    assert following.stdout and following.stdout.readline().endswith("job queued\n")  # it is following
    following.send_signal(signal.SIGINT)  # Ctrl-C
    _, stderr = following.communicate(timeout=60)
    assert (
        following.returncode == 130
        and stderr == f"maas-client: stopped following {long['id']}; the job goes on\n"
    )
    cancelling = json.loads(ok(cli(gateway, key, "fine-tunes", "cancel", long["id"], "--json")))
    assert cancelling["id"] == long["id"] and cancelling["status"] in ("queued", "running", "cancelled")
    followed = cli(gateway, key, "fine-tunes", "follow", long["id"], "--interval", POLL_S)
    assert followed.returncode == 1 and json.loads(followed.stdout.splitlines()[-1])["status"] == "cancelled"
    assert fields(ok(cli(gateway, key, "fine-tunes", "get", long["id"])))["status"] == "cancelled"

    bad_method = cli(gateway, key, "fine-tunes", "create", "tiny-vit", file_id, "--method", "sideways")
    assert bad_method.returncode == 2 and "invalid choice: 'sideways'" in bad_method.stderr
    refused(
        cli(gateway, key, "fine-tunes", "create", "tiny-vit", file_id, "--epochs", "0"), "422 invalid_input"
    )
    refused(cli(gateway, key, "fine-tunes", "create", "tiny-vit", "file_nope"), "404 not_found")
    refused(cli(gateway, key, "fine-tunes", "get", "ftjob_nope"), "404 not_found")
    refused(cli(gateway, key, "fine-tunes", "events", "ftjob_nope"), "404 not_found")
