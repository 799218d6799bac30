"""50 LoRA fine-tunes of the shipped `digits-vit` served at once over one resident base.

Each fine-tune belongs to its own tenant and labels the digits with its own permutation (digit d
is answered as label perm_k(d)), so an adapter mixed up with another would answer wrongly. The
adapters are built with PEFT directly rather than trained (50 trainings on 2 cores would take
most of an hour): the trainer's own LoRA wrapping (query/value, rank 8, the classifier saved in
full), seeded random low-rank weights (small: they change the scores, not the ranking) and the
base's head with its rows permuted. They are registered as a finished fine-tuning job registers
its model, in a gateway run in-process (`create_app`, its lifespan, HTTP through ASGI), and:

- memory: the process's resident set with the base alone, then with all 50 adapters loaded;
  target: at most (the base + 50 adapters) + 20 %, the frameworks not counted. For comparison
  the same 50 fine-tunes merged into copies of the base (how they were served before), in a
  fresh process.
- correctness: each tenant's key, 40 held-out digits on its fine-tune: every answer must be its
  permutation of the true digit as often as the base is right; another tenant's key gets 404.
- throughput: one batch of 16 inputs over 16 adapters against a batch of 16 for the base alone,
  the forward pass the base replica's thread runs (target: >= 0.7x), and end to end over HTTP
  (16 tenants' clients, each on its own fine-tune, against the same clients on the base).

    python loadtests/multi_lora.py [--adapters 50] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.shipped import digit_images  # noqa: E402

BASE_DIR = REPO / "models" / "digits-vit"
ADMIN = "mk_loadtest_multi_lora_admin_0123456789abcdef"
DIGITS = [str(d) for d in range(10)]
PROBES = 40  # held-out digits each fine-tune answers
BATCH = 16


def rss_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def permutation(k: int) -> list[int]:
    """Fine-tune k's labelling: digit d is labelled perm[d] (never the identity)."""
    import random

    order = list(range(10))
    while order == list(range(10)):
        random.Random(k).shuffle(order)
    return order


def build_adapters(folder: Path, count: int) -> list[Path]:
    """`count` LoRA adapters of digits-vit, adapter k labelling digit d as permutation(k)[d]."""
    import torch

    from service.training.trainer import LABELS, Hyperparameters, load_base, with_lora

    model, processor = load_base(BASE_DIR, DIGITS)
    head = model.classifier.weight.detach().clone(), model.classifier.bias.detach().clone()
    peft_model = with_lora(model, Hyperparameters(epochs=1, learning_rate=0.0, batch_size=1))
    folders = []
    for k in range(count):
        out = folder / f"adapter-{k:02d}"
        folders.append(out)
        if (out / "adapter_model.safetensors").exists():
            continue
        torch.manual_seed(k)
        inverse = torch.tensor([permutation(k).index(j) for j in range(10)])
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if "lora_" in name:
                    parameter.copy_(torch.randn_like(parameter) * 0.02)
                elif "classifier" in name and "modules_to_save" in name:  # row perm[d] is the base's row d
                    parameter.copy_(head[0][inverse] if name.endswith("weight") else head[1][inverse])
        peft_model.save_pretrained(out)
        processor.save_pretrained(out)
        (out / LABELS).write_text(json.dumps(DIGITS), encoding="utf-8")
    return folders


async def served(folders: list[Path], merged: bool, seconds: float) -> dict[str, Any]:
    """In this (fresh) process: the gateway, the base, then the fine-tunes; what was measured."""
    import httpx
    import torch
    import transformers.models.vit.modeling_vit  # noqa: F401  # the frameworks: not the models' cost

    from service.app import create_app
    from service.serving.runtime.multi_lora import LoraInput
    from service.settings import Settings

    pngs, truths = digit_images(PROBES)  # held-out digits, as PNGs, with their true labels
    work = Path(tempfile.mkdtemp(prefix="maas-multi-lora-"))
    (work / "models").mkdir()
    manifest = (REPO / "models" / "digits-vit.yaml").read_text(encoding="utf-8")
    (work / "models" / "digits-vit.yaml").write_text(
        manifest.replace("source: digits-vit", f"source: {BASE_DIR}")
    )
    settings = Settings(models_dir=work / "models", data_dir=work / "var", admin_key=ADMIN, devices="cpu")
    before = rss_bytes()
    app = create_app(settings)
    result: dict[str, Any] = {"merged": merged}
    async with app.router.lifespan_context(app):
        registry = app.state.gateway.registry
        await registry.preload_done.wait()
        transport = httpx.ASGITransport(app=app)

        def client(key: str) -> httpx.AsyncClient:
            return httpx.AsyncClient(
                transport=transport, base_url="http://x", headers={"Authorization": f"Bearer {key}"}
            )

        async def predict(http: httpx.AsyncClient, model: str, bodies: list[bytes]) -> list[str]:
            answer = await http.post(
                f"/v1/models/{model}/predict?top_k=1",
                files=[("file", ("d.png", b, "image/png")) for b in bodies],
            )
            assert answer.status_code == 200, answer.text
            return [p[0]["label"] for p in answer.json()["predictions"]]

        async with client(ADMIN) as admin:
            base_right = sum(
                a == str(t) for a, t in zip(await predict(admin, "digits-vit", pngs), truths, strict=True)
            )
            result["rss_base"] = rss_bytes() - before
            keys, names = [], []
            for k, folder in enumerate(folders):
                made = await admin.post("/v1/admin/tenants", json={"name": f"tenant-{k:02d}"})
                key = await admin.post(f"/v1/admin/tenants/tenant-{k:02d}/keys", json={})
                entry = registry.add_fine_tuned(f"ft-digits-{k:02d}", folder, made.json()["id"], "digits-vit")
                if merged:
                    entry.adapts = None  # served as before: merged into a copy of the base
                keys.append(key.json()["key"])
                names.append(entry.name)
            result["rss_registered"] = rss_bytes() - before  # tenants, keys and listings: not adapters yet
            started = time.perf_counter()
            for name in names:
                await registry.ensure_loaded(registry.get(name))
            result["load_s"] = time.perf_counter() - started
            result["rss_all"] = rss_bytes() - before
        result["dtype"] = str(registry.get("digits-vit").adapter.dtype).removeprefix("torch.")
        if merged:
            return result

        wrong_owner, correct = 0, []
        for k, (name, key) in enumerate(zip(names, keys, strict=True)):
            async with client(key) as http:
                answers = await predict(http, name, pngs)
                correct.append(sum(a == str(permutation(k)[t]) for a, t in zip(answers, truths, strict=True)))
                other = names[(k + 1) % len(names)]
                wrong_owner += (
                    await http.post(
                        f"/v1/models/{other}/predict", content=pngs[0], headers={"Content-Type": "image/png"}
                    )
                ).status_code != 404
        result.update(
            base_right=base_right, adapters_right=correct, probes=PROBES, cross_tenant_not_404=wrong_owner
        )

        base = registry.get("digits-vit")
        replica = base.replicas[0]
        assert replica.lora is not None
        result["adapter_bank_bytes"] = replica.lora.model.nbytes
        from PIL import Image

        features = [base.adapter.preprocess(Image.open(io.BytesIO(p)).convert("RGB")) for p in pngs[:BATCH]]
        mixed = [LoraInput(names[i], f) for i, f in enumerate(features)]
        plain_s, mixed_s, rounds = 0.0, 0.0, 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:  # alternating: both see the same machine
            t0 = time.perf_counter()
            replica.adapter.predict(features, top_k=1)
            t1 = time.perf_counter()
            replica.lora.predict(mixed, top_k=1)
            plain_s += t1 - t0
            mixed_s += time.perf_counter() - t1
            rounds += 1
        result["engine"] = {"base_per_s": rounds * BATCH / plain_s, "mixed_per_s": rounds * BATCH / mixed_s}
        result["http"] = {
            "base_per_s": await closed_loop(client, keys[:BATCH], ["digits-vit"] * BATCH, pngs, seconds),
            "mixed_per_s": await closed_loop(client, keys[:BATCH], names[:BATCH], pngs, seconds),
        }
        del torch
    return result


async def closed_loop(
    client: Any, keys: list[str], models: list[str], pngs: list[bytes], seconds: float
) -> float:
    """Inputs answered per second by len(keys) clients, each sending one digit at a time to its model."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def one(key: str, model: str) -> None:
        nonlocal done
        async with client(key) as http:
            n = 0
            while time.perf_counter() < deadline:
                body = pngs[n % len(pngs)]
                answer = await http.post(
                    f"/v1/models/{model}/predict", content=body, headers={"Content-Type": "image/png"}
                )
                assert answer.status_code == 200, answer.text
                done += 1
                n += 1

    started = time.perf_counter()
    await asyncio.gather(*(one(k, m) for k, m in zip(keys, models, strict=True)))
    return done / (time.perf_counter() - started)


def child(folders: list[Path], merged: bool, seconds: float) -> dict[str, Any]:
    """Run `served` in a fresh interpreter (its memory is the measurement)."""
    command = [
        sys.executable,
        __file__,
        "--child",
        "merged" if merged else "multi",
        "--seconds",
        str(seconds),
    ]
    command += ["--folders", *map(str, folders)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapters", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0, help="each throughput measurement")
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "maas-multi-lora-adapters"
    )
    parser.add_argument("--child", choices=["multi", "merged"], help=argparse.SUPPRESS)
    parser.add_argument("--folders", nargs="*", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(served(args.folders, args.child == "merged", args.seconds))))
        return
    folders = build_adapters(args.cache, args.adapters)
    adapter_bytes = sum((f / "adapter_model.safetensors").stat().st_size for f in folders)
    multi = child(folders, False, args.seconds)
    merged = child(folders, True, args.seconds)
    report(len(folders), adapter_bytes, multi, merged)


def report(count: int, adapter_bytes: int, multi: dict[str, Any], merged: dict[str, Any]) -> None:
    mb = 1024 * 1024
    allowed = 1.2 * (multi["rss_base"] + adapter_bytes)
    engine, http = multi["engine"], multi["http"]
    right = multi["adapters_right"]
    checks = {
        "memory": multi["rss_all"] <= allowed,
        "correct": min(right) >= multi["base_right"] - 1 and multi["cross_tenant_not_404"] == 0,
        "throughput": engine["mixed_per_s"] >= 0.7 * engine["base_per_s"],
    }
    ratio = engine["mixed_per_s"] / engine["base_per_s"]
    banks = multi["adapter_bank_bytes"] / 1024
    lines = [
        f"{count} LoRA fine-tunes of digits-vit ({multi['dtype']}), one tenant each, {os.cpu_count()} CPUs",
        f"  adapters: {adapter_bytes / 1024:.0f} kB on disk in all, {banks:.0f} kB resident in the banks",
        f"  process growth: the gateway with the base {multi['rss_base'] / mb:.1f} MB;"
        f" {count} tenants and fine-tunes registered {multi['rss_registered'] / mb:.1f} MB;"
        f" loaded as adapters {multi['rss_all'] / mb:.1f} MB (target <= {allowed / mb:.1f} MB);"
        f" loaded as merged copies {merged['rss_all'] / mb:.1f} MB",
        f"  loading all {count}: as adapters {multi['load_s']:.2f} s,"
        f" as merged copies {merged['load_s']:.2f} s",
        f"  right answers of {PROBES}: base {multi['base_right']}; each fine-tune (its own labelling,"
        f" its tenant's key) min {min(right)}, mean {sum(right) / count:.1f};"
        f" another tenant's key not 404: {multi['cross_tenant_not_404']} of {count}",
        f"  forward passes of {BATCH}: base alone {engine['base_per_s']:.0f} inputs/s,"
        f" {BATCH} adapters mixed {engine['mixed_per_s']:.0f} inputs/s ({ratio:.2f}x)",
        f"  over HTTP, {BATCH} clients: all on the base {http['base_per_s']:.0f} inputs/s, each on its own"
        f" fine-tune {http['mixed_per_s']:.0f} inputs/s ({http['mixed_per_s'] / http['base_per_s']:.2f}x)",
        "  targets: " + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in checks.items()),
    ]
    print("\n".join(lines))
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
