"""The interactive API docs work without internet: every asset they load is served locally."""

from __future__ import annotations

import re

import pytest

from tests.component.conftest import Api

ASSET_RE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")
# JavaScript under either of its registered types; what matters is that browsers run it.
EXPECTED_TYPES = {
    ".js": ("text/javascript", "application/javascript"),
    ".css": ("text/css",),
    ".png": ("image/png",),
}


@pytest.mark.parametrize(("page", "needs"), [("/docs", {".js", ".css"}), ("/redoc", {".js"})])
def test_docs_pages_load_only_local_assets(api: Api, page: str, needs: set[str]) -> None:
    r = api.client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    urls = ASSET_RE.findall(r.text)
    assert {url[url.rfind(".") :] for url in urls} >= needs, urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), f"{page} loads {url} from afar"
        asset = api.client.get(url)
        assert asset.status_code == 200, url
        suffix = url[url.rfind(".") :]
        media_type = asset.headers["content-type"].split(";")[0]
        assert media_type in EXPECTED_TYPES[suffix], (url, media_type)
        assert len(asset.content) > 1000, url
    # And the spec the UI renders is there too.
    assert api.client.get("/openapi.json").json()["info"]["title"] == "modelhost"
