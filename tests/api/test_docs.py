"""/docs and /redoc work with no network: every script, style sheet and icon they name is served
by the gateway itself."""

from __future__ import annotations

import re

import httpx
import pytest

pytestmark = pytest.mark.anyio


def asset_urls(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"]*)"', html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_name_only_local_assets_and_the_gateway_serves_them(
    client: httpx.AsyncClient, page: str
) -> None:
    del client.headers["Authorization"]  # no key needed
    answer = await client.get(page)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    assert "http://" not in answer.text and "https://" not in answer.text  # no CDN, no fonts
    urls = asset_urls(answer.text)
    assert any(url.endswith(".js") for url in urls), urls
    for url in urls:
        assert url.startswith("/"), url
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 0, url
    assert "'/openapi.json'" in answer.text or '"/openapi.json"' in answer.text


async def test_swagger_ui_does_not_send_the_schema_to_the_online_validator(client: httpx.AsyncClient) -> None:
    assert '"validatorUrl": null' in (await client.get("/docs")).text


async def test_the_schema_and_the_oauth2_redirect_page_answer(client: httpx.AsyncClient) -> None:
    del client.headers["Authorization"]
    schema = await client.get("/openapi.json")
    assert schema.status_code == 200 and "/v1/models/{model}/predict" in schema.json()["paths"]
    assert "/docs" not in schema.json()["paths"]  # the docs pages are not API routes
    redirect = await client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200 and "<html" in redirect.text
