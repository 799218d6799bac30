"""The handlers of the `maas-client` command, one per subcommand: call the client, print a table
(or the gateway's JSON with `--json`), return the exit status. The parser is in `cli.py`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from maas_client._cli_output import Cell, print_fields, print_json, print_table, write_output
from maas_client.client import Client
from maas_client.types import (
    APIKey,
    FileObject,
    FineTuneEvent,
    FineTuneJob,
    Prediction,
    Tenant,
    UsageReport,
)

Handler = Callable[[Client, argparse.Namespace, TextIO], int]


def _csv_list(value: str | None) -> list[str] | None:
    """`a,b` as ["a", "b"]; None when the option was not given."""
    return None if value is None else [part.strip() for part in value.split(",") if part.strip()]


# Inference and models


def _print_predictions(files: list[str], result: Prediction, out: TextIO) -> None:
    for name, ranked in zip(files, result.predictions, strict=False):
        print(name, file=out)
        for guess in ranked:
            print(f"  {guess.score:7.4f}  {guess.label}", file=out)
    if result.embeddings is not None:
        for name, vector in zip(files, result.embeddings, strict=False):
            print(f"{name}: {len(vector)}-d embedding", file=out)


def predict(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    result = client.predict(args.model, args.files, top_k=args.top_k)
    if args.json:
        print_json(result.raw, out)
    else:
        _print_predictions(args.files, result, out)
    return 0


def embed(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    print(json.dumps(client.embed(args.model, args.texts).raw), file=out)
    return 0


def models(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    found = client.models.list()
    if args.json:
        print_json([m.raw for m in found], out)
        return 0
    for m in found:
        reason = f"  ({m.reason})" if m.reason else ""
        print(f"{m.id:<28} {m.task or '-':<24} {m.status}{reason}", file=out)
    return 0


# Usage and billing


def _print_usage(report: UsageReport, out: TextIO) -> None:
    groups = report.group_by
    rows: list[list[Cell]] = []
    for row in report.data:
        cells: list[Cell] = []
        for group in groups:
            cells.append(row.tenant_name or row.tenant if group == "tenant" else row.raw.get(group))
        rows.append([*cells, row.kind, row.requests, row.errors, row.inputs, row.compute_seconds, row.cost])
    headers = [*groups, "kind", "requests", "errors", "inputs", "compute_s", "cost"]
    print_table(headers, rows, out)
    print(f"total cost {report.total_cost} from {report.start} to {report.end}", file=out)


def usage(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    report = client.usage.get(start=args.start, end=args.end, group_by=args.group_by)
    if args.json:
        print_json(report.raw, out)
    else:
        _print_usage(report, out)
    return 0


def admin_usage(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    report = client.admin.usage.get(
        tenant=args.tenant, start=args.start, end=args.end, group_by=args.group_by
    )
    if args.json:
        print_json(report.raw, out)
    else:
        _print_usage(report, out)
    return 0


def billing_export(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    fmt = args.format or ("csv" if args.output else None)
    if fmt == "csv":
        text = client.admin.billing.export_csv(args.period)
    else:
        export = client.admin.billing.export(args.period)
        text = json.dumps(export.raw, indent=2) + "\n"
        if fmt is None:
            rows = [
                [line.tenant, line.model, line.kind, line.requests, line.inputs, line.unit_price, line.amount]
                for line in export.lines
            ]
            headers = ["tenant", "model", "kind", "requests", "inputs", "unit_price", "amount"]
            print_table(headers, rows, out)
            print(f"total {export.total} for {export.period}", file=out)
            return 0
    write_output(text, args.output, f"the {args.period} billing export ({fmt})", out)
    return 0


# Files


def _file_row(f: FileObject) -> list[Cell]:
    return [f.id, f.filename, f.bytes, f.labels, f.examples, f.status, f.created_at]


def files_upload(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    uploaded = client.files.upload(Path(args.path), purpose=args.purpose)
    if args.json:
        print_json(uploaded.raw, out)
        return 0
    _, filename, size, labels, examples, status, created = _file_row(uploaded)
    fields = [("id", uploaded.id), ("filename", filename), ("bytes", size), ("labels", labels)]
    fields += [("examples", examples), ("status", status), ("created_at", created)]
    print_fields(fields, out)
    return 0


def files_list(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    found = client.files.list()
    if args.json:
        print_json([f.raw for f in found], out)
        return 0
    headers = ["id", "filename", "bytes", "labels", "examples", "status", "created_at"]
    print_table(headers, [_file_row(f) for f in found], out)
    return 0


def files_delete(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    client.files.delete(args.file_id)
    print(f"deleted {args.file_id}", file=out)
    return 0


# Fine-tunes


def _epochs(job: FineTuneJob) -> str:
    return f"{job.progress.epochs_done}/{job.progress.epochs_total or '?'}"


def _job_fields(job: FineTuneJob) -> list[tuple[str, Cell]]:
    hyper = ", ".join(f"{k}={v}" for k, v in (job.hyperparameters or {}).items()) or None
    metrics = job.metrics or {}
    fields: list[tuple[str, Cell]] = [
        ("id", job.id),
        ("status", job.status),
        ("base_model", job.base_model),
        ("method", job.method),
        ("priority", job.priority),
        ("training_file", job.training_file),
        ("validation_file", job.validation_file),
        ("hyperparameters", hyper),
        ("epochs", _epochs(job)),
        ("steps", f"{job.progress.steps_done}/{job.progress.steps_total or '?'}"),
        ("fine_tuned_model", job.fine_tuned_model),
    ]
    for name in ("validation_accuracy", "validation_loss", "train_loss"):
        if metrics.get(name) is not None:
            fields.append((name, metrics[name]))
    fields += [("device_seconds", job.usage.device_seconds), ("trained_samples", job.usage.trained_samples)]
    if job.error:
        fields.append(("error", job.error))
    fields += [("created_at", job.created_at), ("started_at", job.started_at)]
    fields.append(("finished_at", job.finished_at))
    return fields


def _show_job(job: FineTuneJob, as_json: bool, out: TextIO) -> None:
    if as_json:
        print_json(job.raw, out)
    else:
        print_fields(_job_fields(job), out)


def follow_job(
    client: Client, job_id: str, interval: float, out: TextIO, *, shown_status: str | None = None
) -> int:
    """Print a job's events and status changes until it ends, then its summary as one JSON line;
    0 when it succeeded, 1 when it failed or was cancelled, 130 when interrupted (the job goes
    on). `shown_status`: the status already printed (by `create --follow`)."""
    last_status: list[str] = [] if shown_status is None else [shown_status]

    def progress(job: FineTuneJob, events: list[FineTuneEvent]) -> None:
        for event in events:
            stamp = f"{event.created_at} " if event.created_at else ""
            print(f"{stamp}{event.message}", file=out, flush=True)
        if not last_status or last_status[-1] != job.status:
            print(f"[{job.id}] {job.status}", file=out, flush=True)
            last_status.append(job.status)

    try:
        job = client.fine_tunes.wait(job_id, poll_interval=interval, progress=progress)
    except KeyboardInterrupt:  # Ctrl-C stops the watching, not the job
        print(f"maas-client: stopped following {job_id}; the job goes on", file=sys.stderr)
        return 130
    summary: dict[str, Any] = asdict(job)
    summary.pop("raw", None)
    print(json.dumps(summary), file=out)
    return 0 if job.status == "succeeded" else 1


def fine_tunes_create(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    names = ("epochs", "learning_rate", "batch_size", "seed", "lora_rank", "lora_alpha")
    hyper = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    job = client.fine_tunes.create(
        args.base_model,
        args.training_file,
        validation_file=args.validation_file,
        hyperparameters=hyper or None,
        suffix=args.suffix,
        method=args.method,
        priority=args.priority,
    )
    if args.follow:
        print(f"[{job.id}] {job.status}", file=out, flush=True)  # its id at once, should one stop here
        return follow_job(client, job.id, args.interval, out, shown_status=job.status)
    _show_job(job, args.json, out)
    return 0


def fine_tunes_list(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    jobs = client.fine_tunes.list()
    if args.json:
        print_json([j.raw for j in jobs], out)
        return 0
    headers = ["id", "status", "base_model", "method", "priority", "epochs", "fine_tuned_model", "created_at"]
    rows = [
        [j.id, j.status, j.base_model, j.method, j.priority, _epochs(j), j.fine_tuned_model, j.created_at]
        for j in jobs
    ]
    print_table(headers, rows, out)
    return 0


def fine_tunes_get(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    _show_job(client.fine_tunes.get(args.job_id), args.json, out)
    return 0


def fine_tunes_events(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    events = client.fine_tunes.events(args.job_id)
    if args.json:
        print_json([e.raw for e in events], out)
        return 0
    print_table(["created_at", "type", "message"], [[e.created_at, e.type, e.message] for e in events], out)
    return 0


def fine_tunes_cancel(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    _show_job(client.fine_tunes.cancel(args.job_id), args.json, out)
    return 0


def fine_tunes_follow(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    return follow_job(client, args.job_id, args.interval, out)


# Admin: tenants and keys


def _tenant_row(t: Tenant) -> list[Cell]:
    limits = [t.rate_limit_rps, t.max_concurrency, t.monthly_quota_inputs]
    return [t.name, t.id, t.status, *limits, t.allowed_models, t.created_at]


TENANT_HEADERS = ["name", "id", "status", "rps", "concurrency", "quota", "models", "created_at"]


def tenants_create(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    tenant = client.admin.tenants.create(
        args.name,
        rate_limit_rps=args.rps,
        max_concurrency=args.max_concurrency,
        monthly_quota_inputs=args.quota,
        allowed_models=_csv_list(args.models),
    )
    if args.json:
        print_json(tenant.raw, out)
    else:
        print_fields(list(zip(TENANT_HEADERS, _tenant_row(tenant), strict=True)), out)
    return 0


def tenants_list(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    tenants = client.admin.tenants.list()
    if args.json:
        print_json([t.raw for t in tenants], out)
    else:
        print_table(TENANT_HEADERS, [_tenant_row(t) for t in tenants], out)
    return 0


def _key_fields(key: APIKey) -> list[tuple[str, Cell]]:
    return [
        ("id", key.id),
        ("tenant", key.tenant),
        ("name", key.name),
        ("prefix", key.prefix),
        ("scopes", key.scopes),
        ("models", key.models),
        ("rate_limit_rps", key.rate_limit_rps),
        ("expires_at", key.expires_at),
        ("revoked_at", key.revoked_at),
    ]


def keys_create(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    key = client.admin.keys.create(
        args.tenant,
        name=args.name,
        scopes=_csv_list(args.scopes),
        models=_csv_list(args.models),
        expires_at=args.expires_at,
        rate_limit_rps=args.rps,
    )
    if args.json:
        print_json(key.raw, out)
        return 0
    print_fields(_key_fields(key)[:-1], out)
    # The secret alone on the last line, so that `| tail -n 1` keeps it and nothing else.
    print("\nsecret (shown only this once; store it now, lists show its prefix):", file=out)
    print(key.key, file=out)
    return 0


def keys_list(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    keys = client.admin.keys.list(args.tenant)
    if args.json:
        print_json([k.raw for k in keys], out)
        return 0
    headers = ["id", "name", "prefix", "scopes", "models", "expires_at", "revoked_at", "last_used_at"]
    rows = [
        [k.id, k.name, k.prefix, k.scopes, k.models, k.expires_at, k.revoked_at, k.last_used_at] for k in keys
    ]
    print_table(headers, rows, out)
    return 0


def keys_revoke(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    key = client.admin.keys.revoke(args.key_id)
    if args.json:
        print_json(key.raw, out)
    else:
        print_fields(_key_fields(key), out)
    return 0
