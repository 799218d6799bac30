"""`maas serve` with MAAS_WORKERS=2: a supervisor, a model process and two front-end workers on
one port, over real HTTP, on the default SQLite database.

The answers are those of a single-process gateway, bit for bit (the workers decode, the pixels
cross through their shared memory, the model process runs the forward pass); usage is exact and
an Idempotency-Key retry is billed once whichever worker takes it; one rate limit holds across
the workers; a key revoked or a tenant suspended through one worker is refused by every worker
at once; a monthly quota holds across them; a deadline that passes in the model process's queue
is a 504; a killed worker loses no metered answer and is replaced; a killed model process fails
the requests waiting on it with 503 at once (none hangs) and is started again; the workers,
forked from one template, share its memory; a supervisor killed outright takes every process with
it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import image_bytes, write_manifest, write_tiny_vit
from tests.e2e.conftest import Server, descendants, start_server

pytestmark = pytest.mark.e2e

ADMIN = "mk_e2e_workers_admin_key_0123456789abcdef"
PRICE_MICRO = 1000  # the manifest's per_image price, 0.001, in micro-units
RESTART_S = 180  # a killed process is back well within this, even on a busy machine


def photo(seed: int) -> bytes:
    """A 640x480 JPEG with detail in it (decoded at reduced scale by the fast path)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((160, 120)).resize((640, 480)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_slow_vit(models: Path, root: Path) -> None:
    """`slow-vit`: a ViT big enough that 64 inputs one at a time keep its queue busy for a while."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(1)
    folder = root / "slow-vit"
    config = ViTConfig(
        image_size=224,
        patch_size=16,
        hidden_size=192,
        num_hidden_layers=6,
        num_attention_heads=3,
        intermediate_size=768,
        num_labels=2,
    )
    ViTForImageClassification(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(folder)
    write_manifest(
        models,
        "slow-vit",
        f"name: slow-vit\ntask: image-classification\nsource: {folder}\n"
        "batching: {max_batch_size: 1, max_delay_ms: 1, max_queue: 512}\nprice: {per_image: 0.001}\n",
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_vit_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("workers-models")
    folder = root / "models"
    folder.mkdir()
    write_tiny_vit(folder, tiny_vit_dir)
    write_slow_vit(folder, root)
    return folder


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, models: Path) -> Iterator[Server]:
    env = {"MAAS_WORKERS": "2", "MAAS_ADMIN_KEY": ADMIN, "MAAS_TORCH_THREADS": "1"}
    server = start_server(models, tmp_path_factory.mktemp("workers") / "data", env=env)
    try:
        yield server
    finally:
        assert server.stop() == 0, server.log()[-4000:]


def client(server: Server, key: str = ADMIN) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def predict(server: Server, key: str, body: bytes, model: str = "tiny-vit", **headers: str) -> httpx.Response:
    """One request on a connection of its own (so that the kernel spreads them over the workers)."""
    with client(server, key) as http:
        return http.post(
            f"/v1/models/{model}/predict", content=body, headers={"Content-Type": "image/jpeg", **headers}
        )


def tenant_key(server: Server, tenant: str, **limits: float) -> str:
    with client(server) as admin:
        assert admin.post("/v1/admin/tenants", json={"name": tenant, **limits}).status_code == 201
        made = admin.post(f"/v1/admin/tenants/{tenant}/keys", json={})
        assert made.status_code == 201, made.text
    key: str = made.json()["key"]
    return key


STARTED = "Application startup complete"  # uvicorn's line: a worker is serving


def cpu_seconds(pid: int) -> float:
    """The CPU time process `pid` has used (user + system, /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def workers(server: Server) -> dict[int, int]:
    """The workers now serving (index: pid), as their start-up lines in the log name them: they are
    the template's children, not the supervisor's (service/engine/template.py)."""
    started = {int(index): int(pid) for index, pid in re.findall(r"worker (\d+) \(pid (\d+)\)", server.log())}
    assert started, server.log()[-2000:]
    return started


def running(pid: int) -> bool:
    """Whether `pid` still runs (a zombie, dead and not yet reaped by its new parent, does not)."""
    with contextlib.suppress(FileNotFoundError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


def model_process(server: Server) -> int:
    """The model process now serving, as its start-up line in the log names it."""
    started = re.findall(r"model process \(pid (\d+)\) ready", server.log())
    assert started, server.log()[-2000:]
    return int(started[-1])


def usage(server: Server, tenant: str) -> dict[str, int]:
    """The tenant's usage totals. A connection the kernel handed to a worker that was just killed
    is reset (as a client would, this asks again on a new one)."""
    for attempt in range(5):
        try:
            with client(server) as admin:
                [total] = admin.get("/v1/admin/usage", params={"tenant": tenant}).json()["data"]
            return {k: total[k] for k in ("requests", "errors", "inputs", "cost_micro")}
        except httpx.TransportError:
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


def test_answers_are_those_of_a_single_process_gateway_bit_for_bit(
    gateway: Server, models: Path, tmp_path: Path
) -> None:
    bodies = [photo(seed) for seed in range(3)] + [image_bytes("JPEG", (640, 480), (10, 200, 90))]
    # the reference is one process by nature: pinned, since the default is one worker per core
    env = {"MAAS_WORKERS": "1", "MAAS_ADMIN_KEY": ADMIN, "MAAS_TORCH_THREADS": "1"}
    single = start_server(models, tmp_path / "single", env=env)
    try:
        expected = [predict(single, ADMIN, body).json()["predictions"] for body in bodies]
    finally:
        single.stop()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda body: predict(gateway, ADMIN, body), bodies * 3))
    assert [a.status_code for a in answers] == [200] * len(answers)
    assert [a.json()["predictions"] for a in answers] == expected * 3
    # the pixels were read in place from the workers' shared memory, not sent through the socket
    assert "/arena-" in Path(f"/proc/{model_process(gateway)}/maps").read_text()


def test_whichever_worker_answers_a_model_detail_shows_it_as_loaded(gateway: Server) -> None:
    """A model loaded through one worker shows as loaded from every worker: status, devices and
    dtype as the model process has them, in the list, the detail and the v2 readiness."""
    assert predict(gateway, ADMIN, photo(7)).status_code == 200  # loaded by whichever worker took it
    for _ in range(8):  # a new connection each time: each worker takes some
        with client(gateway) as http:
            listed = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
            detail = http.get("/v1/models/tiny-vit").json()
            ready = http.get("/v2/models/tiny-vit/ready")
        assert (detail["status"], detail["devices"]) == ("ready", ["cpu"]), detail
        assert detail["dtype"] in ("float32", "bfloat16"), detail  # resolved, not the manifest's "auto"
        # what runs a float32 model's Linear layers crosses from the model process too
        assert (detail["cpu_linear"] is not None) == (detail["dtype"] == "float32"), detail
        assert ready.status_code == 200, ready.text
        assert listed["tiny-vit"] == detail


def test_usage_is_exact_and_a_retry_is_billed_once_whichever_worker_takes_it(gateway: Server) -> None:
    key = tenant_key(gateway, "spread")
    body = photo(7)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: predict(gateway, key, body), range(40)))
        retries = list(
            pool.map(lambda _: predict(gateway, key, body, **{"Idempotency-Key": "once"}), range(8))
        )
    assert [a.status_code for a in answers] == [200] * 40
    statuses = sorted(r.status_code for r in retries)
    assert statuses.count(200) >= 1 and set(statuses) <= {200, 409}, statuses  # 409: the first still running
    first = [r for r in retries if r.status_code == 200]
    assert len({r.json()["id"] for r in first}) == 1  # every 200 is the first answer, replayed
    # a repeat (replayed, or 409 while the first runs) records nothing: the first is the one billed
    assert usage(gateway, "spread") == {
        "requests": 41,
        "errors": 0,
        "inputs": 41,
        "cost_micro": 41 * PRICE_MICRO,
    }


def test_one_rate_limit_holds_across_the_workers(gateway: Server) -> None:
    key = tenant_key(gateway, "limited", rate_limit_rps=0.01)  # a burst of 1, then one token per 100 s
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: predict(gateway, key, photo(1)), range(12)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] + [429] * 11, statuses


def test_one_in_flight_cap_holds_across_the_workers(gateway: Server) -> None:
    key = tenant_key(gateway, "one-at-a-time", max_concurrency=1)
    files = [("file", (f"{i}.jpg", photo(4), "image/jpeg")) for i in range(64)]

    def slow_request(_: int) -> int:
        with client(gateway, key) as http:
            return http.post("/v1/models/slow-vit/predict", files=files).status_code

    for _ in range(3):  # two at once, each on its own connection: on one worker or on both
        with ThreadPoolExecutor(2) as pool:
            statuses = sorted(pool.map(slow_request, range(2)))
        assert statuses == [200, 429], statuses
    assert slow_request(0) == 200  # and the slot is free again


def test_a_monthly_quota_holds_across_the_workers(gateway: Server) -> None:
    key = tenant_key(gateway, "quota", monthly_quota_inputs=4)
    # one at a time, each on a new connection: the workers take turns spending one quota
    statuses = [predict(gateway, key, photo(5)).status_code for _ in range(8)]
    assert statuses == [200] * 4 + [429] * 4, statuses
    assert usage(gateway, "quota")["inputs"] == 4


def test_a_request_whose_deadline_passes_in_the_model_process_queue_gets_504(gateway: Server) -> None:
    key = tenant_key(gateway, "hurried")
    files = [("file", (f"{i}.jpg", photo(6), "image/jpeg")) for i in range(64)]

    def slow_request() -> int:
        with client(gateway, key) as http:
            return http.post("/v1/models/slow-vit/predict", files=files).status_code

    with ThreadPoolExecutor(2) as pool:
        ahead = [pool.submit(slow_request) for _ in range(2)]  # 128 inputs, one at a time, before it
        deadline = time.monotonic() + 120
        while queue_depth(gateway, "slow-vit") == 0:  # queued in the model process
            assert time.monotonic() < deadline and not all(a.done() for a in ahead)
        late = predict(gateway, key, photo(6), model="slow-vit", **{"X-Request-Timeout-Ms": "200"})
        assert [a.result(timeout=300) for a in ahead] == [200, 200]
    assert late.status_code == 504 and late.json()["error"]["type"] == "timeout", late.text
    assert predict(gateway, key, photo(6), model="slow-vit").status_code == 200  # and it serves on


def test_a_key_revoked_or_a_tenant_suspended_through_one_worker_is_refused_by_all_at_once(
    gateway: Server,
) -> None:
    """No Redis: the worker that makes the change tells every other worker (through the model
    process) before it answers, not within the key cache's second."""
    me = "/v1/me"
    revoked, suspended = tenant_key(gateway, "revoked"), tenant_key(gateway, "suspended")
    for _ in range(8):  # a new connection each time: every worker has both keys cached
        for key in (revoked, suspended):
            with client(gateway, key) as http:
                assert http.get(me).status_code == 200
    with client(gateway) as admin:
        [made] = admin.get("/v1/admin/tenants/revoked/keys").json()["data"]
        assert admin.delete(f"/v1/admin/keys/{made['id']}").status_code == 200
        assert admin.post("/v1/admin/tenants/suspended/suspend").status_code == 200
    for _ in range(8):  # at once, on whichever worker
        for key, refused in ((revoked, 401), (suspended, 403)):
            with client(gateway, key) as http:
                assert http.get(me).status_code == refused


def answered(server: Server, model: str = "tiny-vit") -> float:
    """`maas_requests_total` for `model`, every status, as /metrics says it: counted by the worker
    that answered, summed over the processes."""
    with client(server) as http:
        metrics = http.get("/metrics").text
    return sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("maas_requests_total{") and f'model="{model}"' in line
    )


def test_a_killed_worker_loses_no_metered_answer_and_is_replaced(gateway: Server) -> None:
    key = tenant_key(gateway, "crash-worker")
    start = answered(gateway)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: predict(gateway, key, photo(2)), range(12)))
    assert [a.status_code for a in answers] == [200] * 12
    deadline = time.monotonic() + RESTART_S
    while (counted := answered(gateway)) < start + 12:  # every worker has reported them
        assert time.monotonic() < deadline, counted
    before = workers(gateway)
    engine = model_process(gateway)
    serving = gateway.log().count(STARTED)
    index, victim = max(before.items(), key=lambda worker: cpu_seconds(worker[1]))  # answered most
    os.kill(victim, signal.SIGKILL)
    assert usage(gateway, "crash-worker")["inputs"] == 12  # every answered request was committed first
    while (now := workers(gateway))[index] == victim:
        assert time.monotonic() < deadline, now
        time.sleep(0.2)  # polling for the replacement, not a timing assumption
    assert now == {**before, index: now[index]}  # the other worker was not touched
    assert running(engine) and model_process(gateway) == engine  # nor the model process
    while predict(gateway, key, photo(2)).status_code != 200:  # served all the while, or once back
        assert time.monotonic() < deadline
    assert usage(gateway, "crash-worker")["inputs"] >= 13
    # /metrics keeps the dead worker's counts: once the replacement serves (and reports its own,
    # from zero, with each scrape it answers), the total never goes down whichever worker answers
    while gateway.log().count(STARTED) == serving:
        assert time.monotonic() < deadline
        time.sleep(0.2)  # polling for the replacement's start, not a timing assumption
    assert all(answered(gateway) >= counted for _ in range(20))


def test_slots_held_by_killed_workers_are_given_back(gateway: Server) -> None:
    key = tenant_key(gateway, "capped-crash", max_concurrency=1)
    files = [("file", (f"{i}.jpg", photo(5), "image/jpeg")) for i in range(64)]

    def slow_request() -> None:
        with contextlib.suppress(httpx.TransportError), client(gateway, key) as http:
            http.post("/v1/models/slow-vit/predict", files=files)  # cut off when its worker dies

    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(slow_request)
        deadline = time.monotonic() + RESTART_S
        while predict(gateway, key, photo(2)).status_code != 429:  # until the slow one holds the slot
            assert time.monotonic() < deadline
            if holder.done():  # it met this probe holding the slot (its 429), or it ended: again
                holder = pool.submit(slow_request)
        serving = gateway.log().count(STARTED)
        for worker in workers(gateway).values():  # whichever holds it: both workers die
            os.kill(worker, signal.SIGKILL)
    while gateway.log().count(STARTED) < serving + 2:  # both replacements serve
        assert time.monotonic() < deadline
        time.sleep(0.2)  # polling for the replacements' start, not a timing assumption
    # the dead workers' slot came back: not 429 (the request they held is gone with them)
    assert predict(gateway, key, photo(2)).status_code == 200


def private_mib(pid: int) -> float:
    """Memory that process `pid` alone holds (USS: its private pages, /proc/PID/smaps_rollup)."""
    fields = dict(line.split()[:2] for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
    return (int(fields["Private_Clean:"]) + int(fields["Private_Dirty:"])) / 1024


def test_workers_share_what_they_import_instead_of_each_holding_it(gateway: Server) -> None:
    with ThreadPoolExecutor(4) as pool:  # both workers have served
        answers = pool.map(lambda seed: predict(gateway, ADMIN, photo(seed)), range(16))
        assert {answer.status_code for answer in answers} == {200}
    # what importing the app alone costs a fresh interpreter, as a spawned worker paid it
    with subprocess.Popen(
        [sys.executable, "-c", "import service.app; print(flush=True); input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as fresh:
        assert fresh.stdout is not None and fresh.stdout.readline() == "\n"  # imported
        alone = private_mib(fresh.pid)
        fresh.communicate("\n", timeout=60)
    assert len(re.findall(r"worker \d+ \(pid \d+\) forked", gateway.log())) >= 2
    for pid in workers(gateway).values():
        assert private_mib(pid) < alone / 2, (private_mib(pid), alone)


def test_the_supervisor_does_not_load_torch(gateway: Server) -> None:
    def maps(pid: int) -> str:
        return Path(f"/proc/{pid}/maps").read_text()

    assert "libtorch" in maps(model_process(gateway))  # where the models are
    assert "libtorch" not in maps(gateway.process.pid)  # it only starts and watches the others


def test_a_supervisor_killed_outright_leaves_no_process_behind(models: Path, tmp_path: Path) -> None:
    env = {"MAAS_WORKERS": "2", "MAAS_ADMIN_KEY": ADMIN, "MAAS_TORCH_THREADS": "1"}
    server = start_server(models, tmp_path / "data", env=env)
    left = set(descendants(server.process.pid))
    assert {model_process(server), *workers(server).values()} <= left  # and the template
    server.process.kill()  # SIGKILL: no drain, nothing to tell the others
    server.process.wait()
    deadline = time.monotonic() + RESTART_S
    while left := {pid for pid in left if running(pid)}:
        assert time.monotonic() < deadline, left
        time.sleep(0.2)  # polling for the orphans' exit, not a timing assumption


def queue_depth(server: Server, model: str) -> float:
    with client(server) as http:
        metrics = http.get("/metrics").text
    line = next(
        (line for line in metrics.splitlines() if line.startswith(f'maas_queue_depth{{model="{model}"}}')),
        None,
    )
    return float(line.split()[-1]) if line else 0.0


def test_a_killed_model_process_fails_the_waiting_requests_with_503_and_comes_back(gateway: Server) -> None:
    key = tenant_key(gateway, "crash-model")
    files = [("file", (f"{i}.jpg", photo(3), "image/jpeg")) for i in range(64)]

    def slow_request() -> tuple[int, float]:
        started = time.monotonic()
        with client(gateway, key) as http:
            answer = http.post("/v1/models/slow-vit/predict", files=files)
        return answer.status_code, time.monotonic() - started

    with ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(slow_request) for _ in range(2)]
        deadline = time.monotonic() + 120
        while queue_depth(gateway, "slow-vit") == 0:  # inputs queued in the model process
            assert time.monotonic() < deadline and not all(w.done() for w in waiting)
        engine = model_process(gateway)
        os.kill(engine, signal.SIGKILL)
        outcomes = [w.result(timeout=60) for w in waiting]
    assert [status for status, _ in outcomes] == [503, 503], outcomes
    assert max(seconds for _, seconds in outcomes) < 60  # answered at once, not at the 30 s deadline
    deadline = time.monotonic() + RESTART_S
    while (answer := predict(gateway, key, photo(3))).status_code != 200:
        assert answer.status_code == 503, answer.text
        assert time.monotonic() < deadline
        time.sleep(0.2)  # polling for the model process to come back, not a timing assumption
    assert not running(engine) and model_process(gateway) != engine
    assert usage(gateway, "crash-model")["inputs"] >= 1
