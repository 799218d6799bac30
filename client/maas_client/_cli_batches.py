"""The handlers of `maas-client batches …`: create, list, get, cancel and results of batch jobs."""

from __future__ import annotations

import argparse
import json
from typing import TextIO

from maas_client._cli_output import Cell, print_fields, print_json, print_table, write_output
from maas_client.client import Client
from maas_client.types import Batch

HEADERS = ["id", "status", "model", "input_file", "total", "completed", "failed", "created_at"]


def _row(job: Batch) -> list[Cell]:
    counts = job.counts
    return [
        job.id,
        job.status,
        job.model,
        job.input_file,
        counts.total,
        counts.completed,
        counts.failed,
        job.created_at,
    ]


def _show(job: Batch, as_json: bool, out: TextIO) -> None:
    if as_json:
        print_json(job.raw, out)
        return
    fields: list[tuple[str, Cell]] = list(zip(HEADERS, _row(job), strict=True))
    fields += [("started_at", job.started_at), ("finished_at", job.finished_at)]
    if job.error:
        fields.append(("error", job.error))
    print_fields(fields, out)


def create(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    job = client.batches.create(args.model, args.input_file)
    if args.wait:
        job = client.batches.wait(job.id, poll_interval=args.interval)
    _show(job, args.json, out)
    return 0 if not args.wait or job.status == "completed" else 1


def list_jobs(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    jobs = client.batches.list()
    if args.json:
        print_json([j.raw for j in jobs], out)
    else:
        print_table(HEADERS, [_row(j) for j in jobs], out)
    return 0


def get(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    _show(client.batches.get(args.batch_id), args.json, out)
    return 0


def cancel(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    _show(client.batches.cancel(args.batch_id), args.json, out)
    return 0


def results(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    text = "".join(json.dumps(line) + "\n" for line in client.batches.results(args.batch_id))
    write_output(text, args.output, f"the results of {args.batch_id}", out)
    return 0
