"""The web console at /console in a real headless Chromium (Debian's `chromium`, driven by
Playwright through `executable_path`) against a real `maas serve`: sign-in (also keyboard only),
usage that matches the API, a key shown once and revoked, the cat photo classified in the
playground, operator pages for admin keys only; the page keeps to its Content-Security-Policy and
logs no error. Screenshots of each page go to $MAAS_TEST_ARTIFACTS when it is set."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, image_bytes, write_manifest, write_tiny_vit
from tests.e2e.conftest import Server, copy_shipped_manifests, start_server
from tests.training.zips import colour_dataset

pytestmark = pytest.mark.e2e

CHROMIUM_VAR = "MAAS_TEST_CHROMIUM"
CHROMIUM = os.environ.get(CHROMIUM_VAR) or shutil.which("chromium") or shutil.which("chromium-browser")
if not CHROMIUM:
    pytest.skip(
        f"no Chromium: install Debian's `chromium` or set {CHROMIUM_VAR} (.ci/run does)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extras")

ADMIN = "mk_console_e2e_admin_key_000000000000000"
CAT = REPO / "samples" / "cat.jpg"
TRAINING_TIMEOUT_MS = 180_000  # one epoch of the tiny ViT on 16 images; minutes only on a loaded machine


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_vit_dir: Path, tiny_clip_dir: Path
) -> Iterator[Server]:
    models = tmp_path_factory.mktemp("console-models")
    write_tiny_vit(models, tiny_vit_dir)
    zero_shot = f"name: tiny-clip\ntask: zero-shot-image-classification\nsource: {tiny_clip_dir}\n"
    write_manifest(models, "tiny-clip", zero_shot)
    copy_shipped_manifests(models, ["efficientnet-lite0"])
    running = start_server(models, tmp_path_factory.mktemp("console") / "var", env={"MAAS_ADMIN_KEY": ADMIN})
    yield running
    running.stop()


def admin_http(server: Server, key: str = ADMIN) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def tenant_with_usage(server: Server, name: str) -> str:
    """A key of a new tenant `name` (inference and fine_tune scopes) that has made two requests
    of 3 inputs in all on `tiny-vit`."""
    with admin_http(server) as admin:
        assert admin.post("/v1/admin/tenants", json={"name": name}).status_code == 201
        made = admin.post(f"/v1/admin/tenants/{name}/keys", json={"name": "console"})
    key: str = made.json()["key"]
    with admin_http(server, key) as tenant:
        files = [("file", (f"{i}.png", image_bytes(), "image/png")) for i in range(2)]
        assert tenant.post("/v1/models/tiny-vit/predict", files=files).status_code == 200
        png = {"Content-Type": "image/png"}
        assert (
            tenant.post("/v1/models/tiny-vit/predict", content=image_bytes(), headers=png).status_code == 200
        )
    return key


@pytest.fixture(scope="module")
def tenant_key(server: Server) -> str:
    return tenant_with_usage(server, "acme")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: CI and containers run as root, where Chromium's sandbox cannot start
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any, server: Server, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh tab on the console; fails the test if the page logged an error (a CSP violation
    is one) or threw."""
    context = browser.new_context(accept_downloads=True)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    tab.goto(f"{server.base_url}/console/")
    yield tab
    if artifacts := os.environ.get("MAAS_TEST_ARTIFACTS"):
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(Path(artifacts) / f"console-{request.node.name}.png"), full_page=True)
    context.close()
    assert errors == []


def sign_in(page: Any, key: str) -> None:
    page.get_by_label("API key", exact=True).fill(key)
    page.get_by_role("button", name="Sign in").click()
    sync_api.expect(page.locator("#identity")).to_be_visible()


def test_the_console_is_served_with_a_strict_content_security_policy(server: Server) -> None:
    with httpx.Client(base_url=server.base_url) as http:
        assert http.get("/console").headers["location"].endswith("/console/")
        pages = [http.get(f"/console/{name}") for name in ("", "console.js", "console.css", "tenant.js")]
    for answer in pages:
        assert answer.status_code == 200
        policy = answer.headers["content-security-policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    html = pages[0].text
    assert re.findall(r"<script[^>]*>", html) == ['<script type="module" src="console.js">']
    assert "<style" not in html and " style=" not in html and not re.search(r"\son\w+=", html)


def test_keyboard_only_sign_in_keeps_the_key_in_session_storage_only(page: Any, tenant_key: str) -> None:
    for _ in range(10):  # Tab until the key field has the focus
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "api-key":
            break
    assert page.evaluate("document.activeElement.id") == "api-key"
    page.keyboard.type(tenant_key)
    page.keyboard.press("Enter")
    sync_api.expect(page.locator("#identity")).to_contain_text("Tenant acme")
    page.get_by_role("link", name="Playground").focus()  # menu links follow Enter
    page.keyboard.press("Enter")
    sync_api.expect(page.locator("#playground")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('maas.apiKey')") == tenant_key
    # the tab stays signed in on reload, also at the skip link's #main, which is no page
    page.goto(f"{page.url.split('#')[0]}#main")
    page.reload()
    sync_api.expect(page.locator("#usage")).to_be_visible()
    assert page.context.cookies() == [] and tenant_key not in page.url
    # a tenant key sees tenant pages only, and cannot open an operator page by its address
    nav = page.get_by_role("navigation", name="Pages")
    assert nav.get_by_role("link").all_inner_texts() == ["Usage", "Playground", "Jobs"]
    page.goto(f"{page.url.split('#')[0]}#tenants")
    sync_api.expect(page.locator("#usage")).to_be_visible()
    assert page.locator("#tenants").is_hidden()
    sync_api.expect(page.locator("#status")).to_contain_text("may not open tenants")


def test_usage_shows_the_totals_the_api_reports(page: Any, server: Server) -> None:
    key = tenant_with_usage(server, "ledger")
    with admin_http(server, key) as tenant:
        report = tenant.get("/v1/usage", params={"group_by": "day,model"}).json()
    [line] = report["data"]
    assert (line["requests"], line["inputs"]) == (2, 3)
    sign_in(page, key)
    sync_api.expect(page.locator("#total-inputs")).to_have_text("3")
    sync_api.expect(page.locator("#total-requests")).to_have_text("2")
    sync_api.expect(page.locator("#total-cost")).to_have_text(report["total_cost"])
    row = page.locator("#usage-table tbody tr")
    sync_api.expect(row).to_have_count(1)
    cells = row.locator("td").all_inner_texts()
    assert cells == [line["day"], "tiny-vit", "inference", "2", "3", line["cost"]]
    bar = page.locator("#usage-chart svg rect title")
    sync_api.expect(bar).to_have_count(1)
    assert bar.text_content() == f"{line['day']} · tiny-vit (inference): {line['cost']}"
    page.get_by_label("Chart").select_option("inputs")
    sync_api.expect(page.locator("#usage-chart svg rect title")).to_have_text(
        f"{line['day']} · tiny-vit (inference): 3"
    )


def test_an_admin_creates_a_key_sees_it_once_and_revokes_it(page: Any, server: Server) -> None:
    sign_in(page, ADMIN)
    page.get_by_role("link", name="API keys").click()
    keys = page.locator("#keys")
    keys.get_by_label("Tenant").select_option("acme")
    keys.get_by_label("Name", exact=True).fill("browser")
    page.get_by_role("button", name="Create key").click()
    shown = page.locator("#new-key-value")
    sync_api.expect(shown).to_have_text(re.compile(r"^mk_"))
    key = shown.text_content()
    with admin_http(server, key) as made:
        assert made.get("/v1/me").json()["tenant"] == "acme"
    page.get_by_role("button", name="I have copied it").click()
    assert key not in page.content()  # shown once: gone from the page
    page.get_by_role("button", name="Revoke key browser").click()
    sync_api.expect(page.locator("#keys-table tr", has_text="browser")).to_contain_text("revoked")
    with admin_http(server, key) as revoked:
        assert revoked.get("/v1/me").status_code == 401


def test_the_playground_finds_a_cat_in_the_cat_photo(page: Any, tenant_key: str) -> None:
    sign_in(page, tenant_key)
    page.get_by_role("link", name="Playground").click()
    page.get_by_label("Model", exact=True).select_option("efficientnet-lite0")
    page.locator("#play-file").set_input_files(str(CAT))
    page.get_by_role("button", name="Run").click()
    labels = page.locator("#play-chart svg text.label")
    sync_api.expect(labels).to_have_count(5)
    assert any("cat" in label for label in labels.all_text_contents())
    sync_api.expect(page.locator("#play-meta")).to_contain_text("cost 0.000100")


def test_an_admin_sees_and_manages_tenants_and_sees_models(
    page: Any, server: Server, tenant_key: str
) -> None:
    sign_in(page, ADMIN)
    page.get_by_role("link", name="Tenants").click()
    sync_api.expect(page.locator("#tenants-table")).to_contain_text("acme")
    create = page.locator("#tenant-form")
    create.get_by_label("Name", exact=True).fill("beta")
    create.get_by_label("Monthly quota in inputs").fill("1000")
    page.get_by_role("button", name="Create tenant").click()
    beta = page.locator("#tenants-table tbody tr", has_text="beta")
    sync_api.expect(beta).to_contain_text("1000")
    page.get_by_role("button", name="Suspend tenant beta").click()
    sync_api.expect(beta).to_contain_text("suspended")
    limits = page.locator("#limits-form")
    limits.get_by_label("Tenant").select_option("beta")
    sync_api.expect(limits.get_by_label("Monthly quota in inputs")).to_have_value("1000")
    limits.get_by_label("Requests per second").fill("7.5")
    limits.get_by_label("Monthly quota in inputs").fill("")  # empty: no quota
    limits.get_by_role("button", name="Save limits").click()
    sync_api.expect(beta.locator("td").nth(2)).to_have_text("7.5")
    sync_api.expect(beta.locator("td").nth(4)).to_have_text("none")
    with admin_http(server) as admin:
        changed = admin.get("/v1/admin/tenants/beta").json()
    assert (changed["rate_limit_rps"], changed["monthly_quota_inputs"], changed["weight"]) == (7.5, None, 1.0)
    page.get_by_role("link", name="Models").click()
    model = page.locator("#models-table tbody tr", has_text="efficientnet-lite0")
    sync_api.expect(model).to_contain_text("ready")
    # tiny-vit served tenant_key's requests: 3 inputs in 2 or 3 forward passes
    tiny = page.locator("#models-table tbody tr", has_text="tiny-vit")
    mean_batch = float(tiny.locator("td").nth(7).inner_text())
    assert 1 <= mean_batch <= 2
    sync_api.expect(page.locator("#devices-table tbody tr", has_text="cpu")).to_contain_text("MiB")


def test_an_admin_downloads_the_billing_export_as_the_api_gives_it(
    page: Any, server: Server, tenant_key: str
) -> None:
    sign_in(page, ADMIN)
    sync_api.expect(page.locator("#usage")).to_be_visible()
    with page.expect_download() as started:
        page.get_by_role("button", name="Download billing CSV").click()
    download = started.value
    month = datetime.now(UTC).strftime("%Y-%m")
    assert download.suggested_filename == f"maas-billing-{month}.csv"
    with admin_http(server) as admin:
        expected = admin.get("/v1/admin/billing/export", params={"period": month, "format": "csv"}).text
    assert "acme" in expected
    assert Path(download.path()).read_text(encoding="utf-8") == expected


def test_a_tenant_key_has_no_billing_download(page: Any, tenant_key: str) -> None:
    sign_in(page, tenant_key)
    sync_api.expect(page.locator("#usage-table tbody tr")).not_to_have_count(0)
    assert page.get_by_role("button", name="Download billing CSV").count() == 0


def test_a_tenant_fine_tunes_a_model_watches_it_succeed_and_finds_it_in_the_playground(
    page: Any, tenant_key: str, tmp_path: Path
) -> None:
    dataset = tmp_path / "colours.zip"
    dataset.write_bytes(colour_dataset())
    sign_in(page, tenant_key)
    page.get_by_role("link", name="Jobs").click()
    jobs = page.locator("#jobs")
    jobs.get_by_label("Dataset").set_input_files(str(dataset))
    jobs.get_by_label("Base model").select_option("tiny-vit")
    jobs.get_by_label("Epochs").fill("1")
    jobs.get_by_label("Learning rate").fill("0.005")
    jobs.get_by_label("Batch size").fill("4")
    jobs.get_by_label("Suffix").fill("colours")
    jobs.get_by_role("button", name="Start job").click()
    job = page.locator("#jobs-table tbody tr").first
    sync_api.expect(job).to_contain_text("succeeded", timeout=TRAINING_TIMEOUT_MS)  # the page polls
    model = job.locator("td").nth(4).inner_text()
    assert "colours" in model
    sync_api.expect(page.locator("#job-events li").last).to_contain_text("succeeded")
    page.get_by_role("link", name="Playground").click()
    sync_api.expect(page.locator(f"#play-model option[value='{model}']")).to_have_count(1)


def test_the_playground_scores_an_image_against_candidate_labels(page: Any, tenant_key: str) -> None:
    sign_in(page, tenant_key)
    page.get_by_role("link", name="Playground").click()
    page.get_by_label("Model", exact=True).select_option("tiny-clip")
    page.locator("#play-file").set_input_files(str(CAT))
    page.get_by_label("Candidate labels").fill("a cat, a dog, a car")
    page.get_by_role("button", name="Run").click()
    labels = page.locator("#play-chart svg text.label")
    sync_api.expect(labels).to_have_count(3)
    assert sorted(labels.all_text_contents()) == ["a car", "a cat", "a dog"]
