"""A gateway process's long-lived objects kept out of the cyclic garbage collector's way.

A gateway process holds a few hundred thousand objects that live as long as it does: torch,
transformers, the app, each loaded model's modules. Python's collector walks every one of them in
each full (oldest-generation) collection, and a busy process makes enough garbage for one every
few seconds: each held the event loop for 150-250 ms (the model process under load: p99 196 ms
against a p50 of 14; `loadtests/engine_ceiling.py`). `settle` collects once and freezes what is
left (`gc.freeze`), so that later collections walk only what was made since.

It works only in a process that manages its heap (`manage`: `maas serve`'s processes, with
`MAAS_GC_FREEZE` on), where it runs once the process has started and after a model is loaded or
freed, when a pause of one collection is expected anyway. Elsewhere (a test that runs the gateway
inside its own process) it does nothing.

A front-end worker is forked from a template that froze its imports (service/engine/template.py):
there, what it inherited stays frozen, and is never collected again, so that its pages stay shared
with the template's. A worker holds no model's weights, only preprocessing recipes, so nothing
large is ever freed among them. The model process, a fork of the same template, unfreezes them
like everything else: a model it unloads must be found and freed.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger(__name__)

_managed = False
_inherited = False  # objects frozen before a fork stay frozen


def manage(*, inherited: bool = False) -> None:
    """From now on this process's `settle` freezes its heap (call once, at the process's start);
    `inherited`: it was forked with a frozen heap, which `settle` leaves frozen."""
    global _managed, _inherited
    _managed = True
    _inherited = inherited


def settle() -> None:
    """Collect everything once (a model freed since the last time is found again, even if a cycle
    holds it), then freeze what is alive; nothing unless this process manages its heap."""
    if not _managed:
        return
    started = time.perf_counter()
    if not _inherited:
        gc.unfreeze()
    gc.collect()
    gc.freeze()
    log.debug(
        "heap settled: %d objects frozen in %.0f ms",
        gc.get_freeze_count(),
        1000 * (time.perf_counter() - started),
    )
