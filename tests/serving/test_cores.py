"""CPU passes hold the cores they use: a pass on several intra-op threads runs on the process's one
wide thread, so that OpenMP keeps one team of threads whichever lane asks (with a team per lane,
libgomp stops spinning and a lone request's pass on 2 threads took 30 ms instead of 14), and it
never shares the cores with a lane's pass."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from service.serving.devices import Cores, on_threads

ROOT = Path(__file__).resolve().parents[2]


def _until(condition: Callable[[], bool]) -> None:
    """Wait until another thread has got to where `condition` holds (a few seconds at most)."""
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, "the other thread never got there"
        time.sleep(0.001)


def _holder(cores: Cores, wanted: int, entered: threading.Event, leave: threading.Event) -> threading.Thread:
    def hold() -> None:
        with cores.held(wanted):
            entered.set()
            leave.wait()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    return thread


def test_a_pass_on_every_core_waits_for_the_lanes_and_holds_them_back() -> None:
    cores = Cores(2)
    lane, wide, late = (threading.Event() for _ in range(3))
    leave_lane, leave_wide, leave_late = (threading.Event() for _ in range(3))
    holders = [_holder(cores, 1, lane, leave_lane)]
    lane.wait()
    holders.append(_holder(cores, 2, wide, leave_wide))
    _until(lambda: len(cores.line) == 1)
    holders.append(_holder(cores, 1, late, leave_late))  # a core is free, but the wide pass came first
    _until(lambda: len(cores.line) == 2)
    assert not wide.is_set() and not late.is_set()

    leave_lane.set()
    wide.wait()
    assert not late.is_set()  # still behind the wide pass, which holds both cores
    leave_wide.set()
    late.wait()
    leave_late.set()
    for holder in holders:
        holder.join()
    assert cores.free == 2


def test_more_threads_than_cores_take_them_all_and_no_more() -> None:
    cores = Cores(2)
    with cores.held(8):
        assert cores.free == 0
    assert cores.free == 2


def test_wide_passes_run_on_one_thread_with_their_threads_and_lanes_on_their_own() -> None:
    def where() -> tuple[int, int]:
        return threading.get_ident(), torch.get_num_threads()

    with ThreadPoolExecutor(3) as lanes:
        wide = list(lanes.map(lambda _: on_threads(2, where), range(6)))
        narrow = list(lanes.map(lambda _: (threading.get_ident(), on_threads(1, where)), range(6)))
    assert len({ident for ident, _ in wide}) == 1
    assert {threads for _, threads in wide} == {2}
    assert all(caller == ident and threads == 1 for caller, (ident, threads) in narrow)


# Lone batches asked for by three lanes, each on 2 intra-op threads; prints the threads the
# process gained by the end (the lanes' own three included).
_TEAMS = """
import os, threading
import torch
from service.serving.devices import on_threads

torch.set_num_threads(2)
weights = torch.rand(512, 512)
before = len(os.listdir("/proc/self/task"))
passed, counted = threading.Barrier(4), threading.Event()

def lane():
    for _ in range(20):
        on_threads(2, lambda: weights @ weights)
    passed.wait()
    counted.wait()  # every lane alive while the threads are counted

lanes = [threading.Thread(target=lane) for _ in range(3)]
for thread in lanes:
    thread.start()
passed.wait()
print(len(os.listdir("/proc/self/task")) - before)
counted.set()
for thread in lanes:
    thread.join()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts threads in /proc")
def test_lone_batches_from_every_lane_share_one_openmp_team() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _TEAMS], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    gained = int(done.stdout.split()[-1])
    # the 3 lanes, the wide thread and its one OpenMP helper; a team per lane would add 3 helpers
    assert gained == 5, gained
