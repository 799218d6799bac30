"""Admission to decoding and preprocessing (`PreprocessGate`), driven step by step: requests wait
on a full stage, a slot is freed by hand, and the test looks at who was admitted. Nothing waits
on wall-clock timing (deadlines are either far off or already passed)."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.errors import DeadlineExceeded
from service.serving.admission import PreprocessGate
from service.serving.fairqueue import ServiceClass, Share

FAR = 3600.0


class Stage:
    """Requests going through a gate; each holds its slot until the test lets it go."""

    def __init__(self, gate: PreprocessGate) -> None:
        self.gate = gate
        self.admitted: list[str] = []
        self._done: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def send(self, name: str, share: Share, deadline: float | None = None) -> asyncio.Task[None]:
        self._done[name] = asyncio.Event()

        async def request() -> None:
            async with self.gate.admit(share, time.monotonic() + FAR if deadline is None else deadline):
                self.admitted.append(name)
                await self._done[name].wait()

        self.tasks[name] = asyncio.create_task(request())
        return self.tasks[name]

    async def finish(self, name: str) -> None:
        self._done[name].set()
        await self.tasks[name]
        await settle()


async def settle() -> None:
    for _ in range(5):  # let every ready task take its step
        await asyncio.sleep(0)


async def in_turn(stage: Stage, names: list[str]) -> list[str]:
    """Finish the admitted requests one by one until `names` have all been admitted."""
    while not set(names) <= set(stage.admitted):
        running = [n for n in stage.admitted if not stage.tasks[n].done()]
        await stage.finish(running[0])
    return [n for n in stage.admitted if n in names]


def tenant(name: str, weight: float = 1.0, service_class: ServiceClass = ServiceClass.INTERACTIVE) -> Share:
    return Share(name, weight, service_class)


@pytest.mark.anyio
async def test_a_free_stage_admits_at_once_up_to_its_limit() -> None:
    stage = Stage(PreprocessGate(2))
    for name in ("a", "b", "c"):
        stage.send(name, tenant("flood"))
    await settle()
    assert stage.admitted == ["a", "b"] and stage.gate.busy == 2 and stage.gate.waiting == 1
    await stage.finish("a")
    assert stage.admitted == ["a", "b", "c"]


@pytest.mark.anyio
async def test_a_light_tenant_is_admitted_before_the_flood_queued_ahead_of_it() -> None:
    stage = Stage(PreprocessGate(1))
    for i in range(6):
        stage.send(f"flood{i}", tenant("flood"))
    await settle()
    stage.send("light", tenant("light"))
    await settle()
    await in_turn(stage, ["light"])
    # one flood request was decoding and the next queued had the same start tag; then the light one
    assert stage.admitted == ["flood0", "flood1", "light"]


@pytest.mark.anyio
async def test_without_fair_queueing_the_light_tenant_waits_behind_the_flood() -> None:
    stage = Stage(PreprocessGate(1, fair=False))
    for i in range(6):
        stage.send(f"flood{i}", tenant("flood"))
    await settle()
    stage.send("light", tenant("light"))
    await settle()
    assert (await in_turn(stage, ["light"]))[-1] == "light"
    assert stage.admitted.index("light") == 6


@pytest.mark.anyio
async def test_tenants_are_admitted_by_weight() -> None:
    stage = Stage(PreprocessGate(1))
    stage.send("hold", tenant("x"))
    await settle()
    for i in range(8):
        stage.send(f"heavy{i}", tenant("heavy", 3.0))
    for i in range(8):
        stage.send(f"light{i}", tenant("light"))
    await settle()
    order = await in_turn(stage, [f"heavy{i}" for i in range(8)] + [f"light{i}" for i in range(8)])
    first8 = order[:8]
    assert sum(n.startswith("heavy") for n in first8) == 6


@pytest.mark.anyio
async def test_interactive_requests_go_before_batch_ones() -> None:
    stage = Stage(PreprocessGate(1))
    stage.send("hold", tenant("job", service_class=ServiceClass.BATCH))
    await settle()
    for i in range(3):
        stage.send(f"batch{i}", tenant("job", service_class=ServiceClass.BATCH))
    await settle()
    stage.send("interactive", tenant("someone"))
    await settle()
    await stage.finish("hold")
    assert stage.admitted[1] == "interactive"


@pytest.mark.anyio
async def test_a_deadline_passing_while_waiting_is_a_504_and_takes_no_slot() -> None:
    stage = Stage(PreprocessGate(1))
    stage.send("hold", tenant("a"))
    await settle()
    late = stage.send("late", tenant("b"), deadline=time.monotonic() - 1)
    stage.send("next", tenant("c"))
    await settle()
    with pytest.raises(DeadlineExceeded, match="waiting to decode and preprocess"):
        await late
    await stage.finish("hold")
    assert stage.admitted == ["hold", "next"] and stage.gate.busy == 1


async def full_stage(*waiting: str) -> Stage:
    """A stage of one slot held by "hold", with `waiting` queued behind it (each its own tenant)."""
    stage = Stage(PreprocessGate(1))
    stage.send("hold", tenant("hold"))
    await settle()
    for name in waiting:
        stage.send(name, tenant(name))
    await settle()
    return stage


@pytest.mark.anyio
async def test_a_caller_that_leaves_stops_waiting_and_its_turn_passes_on() -> None:
    stage = await full_stage("gone", "next")
    stage.tasks["gone"].cancel()
    await settle()
    await stage.finish("hold")
    assert stage.admitted == ["hold", "next"]
    await stage.finish("next")
    assert stage.gate.busy == 0 and stage.gate.waiting == 0


@pytest.mark.anyio
async def test_a_slot_handed_to_a_caller_as_it_leaves_is_passed_on() -> None:
    stage = await full_stage("gone", "next")
    stage._done["hold"].set()
    await asyncio.sleep(0)  # "hold" leaves: its slot goes to "gone", which has not run yet
    stage.tasks["gone"].cancel()
    await settle()
    assert "gone" not in stage.admitted and stage.admitted[-1] == "next" and stage.gate.busy == 1


@pytest.mark.anyio
async def test_a_stage_left_by_every_waiter_admits_the_next_at_once() -> None:
    stage = await full_stage("gone")
    stage.tasks["gone"].cancel()
    await stage.finish("hold")
    stage.send("next", tenant("c"))
    await settle()
    assert stage.admitted == ["hold", "next"]


def test_the_limit_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        PreprocessGate(0)
