"""The template of `maas serve`'s processes: what the model process and every worker import,
imported once.

The supervisor starts them from multiprocessing's fork server with this module preloaded
(service/engine/processes.py): each is a fork of that one process, and shares its pages (torch,
transformers, the app) until it writes to them, instead of importing them all itself (with spawn,
2.5-4 s and about 200 MiB of private memory per worker, at one worker per core). Nothing here
starts a thread or touches a device, so the fork is safe.

The imports are frozen (`gc.freeze`) once imported: a worker's collections never walk them, which
would write to every page that holds one of them (service/heap.py keeps them frozen there).
"""

from __future__ import annotations

import gc

import transformers.pipelines  # noqa: F401  # the model process's, before any model loads (gateway.py)

import service.app
import service.cli.serve
import service.engine.client
import service.engine.server  # noqa: F401

gc.collect()
gc.freeze()
