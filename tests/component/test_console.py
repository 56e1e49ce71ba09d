"""The web console (/ui/) rendered in-process: sign in and out, every page, the create form's
inline errors (the API's own rules), settings and actions, tenancy (404), admin pages (403),
CSRF refusals, and that nothing it serves points outside the server."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from modelhost.console import session as sessions
from modelhost.security.secretbox import SecretBox
from tests.adapters_fixture import write_adapter
from tests.component.conftest import Api
from tests.conftest import ADMIN_TOKEN, auth, wait_until

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF_RE.search(html)
    assert found, "no CSRF field on the page"
    return found.group(1)


def sign_in(client: TestClient, token: str) -> str:
    """Signs the client in; returns the session's CSRF value."""
    client.cookies.clear()
    form = client.get("/ui/login")
    assert form.status_code == 200
    r = client.post("/ui/login", data={"csrf_token": csrf_of(form.text), "token": token})
    assert r.status_code == 200 and r.url.path == "/ui/deployments", r.text
    return csrf_of(r.text)


def field_errors(html: str) -> dict[str, str]:
    return dict(re.findall(r'class="field-error" data-for="([^"]+)">([^<]*)<', html))


def create_form(**over: str) -> dict[str, str]:
    form = {
        "model_name": "sim",
        "weights": "none",
        "gpu": "A100-80GB",
        "num_gpus": "1",
        "max_batch_size": "8",
        "engine": "simulator",
        "settings.min_instances": "1",
        "settings.max_instances": "1",
    }
    form.update(over)
    return form


def create(client: TestClient, csrf: str, **over: str) -> str:
    r = client.post("/ui/deployments/new", data={"csrf_token": csrf, **create_form(**over)})
    assert r.status_code == 200, r.text
    match = re.fullmatch(r"/ui/deployments/(d[0-9a-f]+)", r.url.path)
    assert match, r.url
    return match.group(1)


@pytest.fixture
def client(api: Api) -> TestClient:
    # The console ignores Authorization headers: drop the API fixture's, if any.
    api.client.headers.pop("authorization", None)
    return api.client


def test_root_and_ui_send_a_stranger_to_sign_in(client: TestClient) -> None:
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui/"
    r = client.get("/ui/deployments", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    # An htmx poll is told to go there itself.
    r = client.get("/ui/deployments/rows", headers={"HX-Request": "true"})
    assert r.headers["HX-Redirect"] == "/ui/login"


def test_sign_in_sets_an_encrypted_httponly_strict_cookie_and_sign_out_ends_it(
    client: TestClient, api: Api
) -> None:
    form = client.get("/ui/login")
    r = client.post(
        "/ui/login",
        data={"csrf_token": csrf_of(form.text), "token": ADMIN_TOKEN},
        follow_redirects=False,
    )
    assert r.status_code == 303
    cookie = next(
        h for h in r.headers.get_list("set-cookie") if h.startswith(f"{sessions.COOKIE}=")
    )
    attrs = cookie.lower()
    assert "httponly" in attrs and "samesite=strict" in attrs and "path=/ui" in attrs
    value = cookie.split(";")[0].split("=", 1)[1]
    assert ADMIN_TOKEN not in value and ADMIN_TOKEN[3:20] not in value
    page = client.get("/ui/deployments")
    assert page.status_code == 200 and "admin" in page.text
    r = client.post("/ui/logout", data={"csrf_token": csrf_of(page.text)})
    assert r.url.path == "/ui/login"
    r = client.get("/ui/deployments", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"


def test_a_bad_token_is_refused_and_a_forged_or_foreign_cookie_is_no_session(
    client: TestClient, api: Api
) -> None:
    form = client.get("/ui/login")
    r = client.post("/ui/login", data={"csrf_token": csrf_of(form.text), "token": "mh_nope"})
    assert r.status_code == 401 and "not valid" in r.text
    assert sessions.COOKIE not in client.cookies
    # Not sealed with this server's key: ignored.
    for value in ("garbage", sessions.seal(_foreign_box(), sessions.new_session(ADMIN_TOKEN))):
        client.cookies.set(sessions.COOKIE, value, path="/ui")
        r = client.get("/ui/deployments", follow_redirects=False)
        assert r.status_code == 303, value


def _foreign_box() -> SecretBox:
    from cryptography.fernet import Fernet

    return SecretBox(Fernet.generate_key())


def test_sessions_expire_and_do_not_survive_a_revoked_token(client: TestClient, api: Api) -> None:
    box = _foreign_box()
    sealed = sessions.seal(box, sessions.new_session("mh_x", now=1000.0))
    assert sessions.unseal(box, sealed, now=1000.0 + 60) is not None
    assert sessions.unseal(box, sealed, now=1000.0 + sessions.MAX_AGE_S + 1) is None
    # A user's token revoked through the API ends the console session at the next page.
    token = api.new_user("rita")
    csrf = sign_in(client, token)
    created = client.post("/ui/tokens", data={"csrf_token": csrf, "name": "second"})
    second = re.search(r'<pre class="token">(mh_[^<]+)</pre>', created.text)
    assert second, created.text
    sign_in(client, second.group(1))
    tokens = client.get("/ui/tokens").text
    token_id = re.search(r'data-token-id="([^"]+)"><td>second<', tokens)
    assert token_id
    r = client.post(f"/ui/tokens/{token_id.group(1)}/revoke", data={"csrf_token": csrf_of(tokens)})
    # Revoking the token the session runs on: the next page is the sign-in page.
    assert r.url.path == "/ui/login"


ADMIN_PAGES = ["/ui/admin/users", "/ui/admin/gpus"]
USER_PAGES = [
    "/ui/deployments",
    "/ui/deployments/rows",
    "/ui/deployments/new",
    "/ui/adapters",
    "/ui/tokens",
    "/ui/usage",
    "/ui/usage?group_by=day",
]


def test_every_page_renders_for_an_admin(client: TestClient) -> None:
    csrf = sign_in(client, ADMIN_TOKEN)
    deploy_id = create(client, csrf)
    details = [
        f"/ui/deployments/{deploy_id}",
        f"/ui/deployments/{deploy_id}/status",
        f"/ui/deployments/{deploy_id}/events",
        f"/ui/deployments/{deploy_id}/logs",
        f"/ui/deployments/{deploy_id}/object",
    ]
    for path in [*USER_PAGES, *ADMIN_PAGES, *details, "/ui/deployments?all=true"]:
        r = client.get(path)
        assert r.status_code == 200, (path, r.text[:500])
        assert r.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in r.headers["content-security-policy"]
    gpus = client.get("/ui/admin/gpus").text
    assert "A100-80GB" in gpus and "$2.00" in gpus
    assert client.get("/ui/nowhere").status_code == 404


def test_the_create_form_offers_gpus_with_availability_and_price(client: TestClient) -> None:
    sign_in(client, ADMIN_TOKEN)
    html = client.get("/ui/deployments/new").text
    assert "A100-80GB — 8/8 free — $2.00/h (virtual)" in html
    for name in ("model_name", "gpu", "num_gpus", "max_batch_size", "engine", "hf.repo"):
        assert f'name="{name}"' in html
    assert 'name="settings.min_instances"' in html and 'name="settings.max_instances"' in html
    assert '<option value="simulator"' in html


@pytest.mark.parametrize(
    ("over", "field", "words"),
    [
        ({"model_name": "Bad Name"}, "model_name", "must match"),
        ({"gpu": "TPU-v9"}, "gpu", "this server offers"),
        ({"num_gpus": "9"}, "num_gpus", "less than or equal to 8"),
        ({"num_gpus": "two"}, "num_gpus", "valid integer"),
        ({"max_batch_size": "0"}, "max_batch_size", "greater than or equal to 1"),
        ({"engine": "builtin"}, "weights", "weights are required"),
        ({"weights": "hf", "hf.repo": "not a repo"}, "hf.repo", "pattern"),
        ({"weights": "base_model", "base_model": "nope"}, "base_model", "unknown base_model"),
        ({"settings.min_instances": "3"}, "settings.max_instances", "must be &gt;= min"),
        ({"settings.max_instances": "9"}, "settings.max_instances", "quota"),
    ],
)
def test_the_create_form_shows_the_apis_validation_errors_inline(
    client: TestClient, api: Api, over: dict[str, str], field: str, words: str
) -> None:
    token = api.new_user("carol", gpu_limit=4)
    csrf = sign_in(client, token)
    r = client.post("/ui/deployments/new", data={"csrf_token": csrf, **create_form(**over)})
    assert r.status_code in (403, 422), r.text
    errors = field_errors(r.text)
    assert field in errors, errors
    assert words in errors[field], errors
    # What was typed stays in the form (the HF token never comes back).
    for key, value in over.items():
        if key not in ("weights", "gpu", "engine", "base_model"):
            assert f'value="{value}"' in r.text
    assert api.client.get("/deploy/list", headers=auth(token)).json() == []


def test_create_then_settings_actions_and_delete(client: TestClient, api: Api) -> None:
    token = api.new_user("dave", gpu_limit=4)
    csrf = sign_in(client, token)
    deploy_id = create(client, csrf, model_name="web")
    page = client.get(f"/ui/deployments/{deploy_id}").text
    assert "dave/web" in page and deploy_id in page and 'id="charts"' in page
    listed = client.get("/ui/deployments/rows").text
    assert "dave/web" in listed and "badge status-" in listed

    def status() -> str:
        r = api.client.get(f"/deploy/{deploy_id}", headers=auth(token))
        return str(r.json()["status"])

    wait_until(lambda: status() == "ready", timeout=30, what="ready")
    assert "status-ready" in client.get(f"/ui/deployments/{deploy_id}/status").text
    # Settings: max instances up, a knob changed; applied through the API's PUT.
    r = client.post(
        f"/ui/deployments/{deploy_id}/settings",
        data={"csrf_token": csrf, "min_instances": "1", "max_instances": "2", "cooldown_s": "45"},
    )
    assert r.status_code == 200 and r.url.path == f"/ui/deployments/{deploy_id}"
    settings = api.client.get(f"/deploy/{deploy_id}", headers=auth(token)).json()["settings"]
    assert settings["max_instances"] == 2 and settings["cooldown_s"] == 45
    # Invalid: shown next to the field, nothing changed.
    r = client.post(
        f"/ui/deployments/{deploy_id}/settings",
        data={"csrf_token": csrf, "min_instances": "3", "max_instances": "2"},
    )
    assert r.status_code == 422 and "min_instances" in field_errors(r.text)
    # Over quota (4 GPUs): the API's 403, on the page.
    r = client.post(
        f"/ui/deployments/{deploy_id}/settings",
        data={"csrf_token": csrf, "max_instances": "5"},
    )
    assert r.status_code == 403 and "max_instances" in field_errors(r.text)
    client.post(f"/ui/deployments/{deploy_id}/stop", data={"csrf_token": csrf})
    wait_until(lambda: status() == "stopped", timeout=30, what="stopped")
    client.post(f"/ui/deployments/{deploy_id}/start", data={"csrf_token": csrf})
    wait_until(lambda: status() == "ready", timeout=30, what="ready again")
    events = client.get(f"/ui/deployments/{deploy_id}/events").text
    assert "stopped by its owner" in events and "started by its owner" in events
    r = client.post(f"/ui/deployments/{deploy_id}/delete", data={"csrf_token": csrf})
    assert r.url.path == "/ui/deployments"
    assert api.client.get(f"/deploy/{deploy_id}", headers=auth(token)).status_code == 404


def test_metrics_json_is_the_apis_series(client: TestClient) -> None:
    csrf = sign_in(client, ADMIN_TOKEN)
    deploy_id = create(client, csrf)
    for window in ("1h", "24h", "7d"):
        r = client.get(f"/ui/deployments/{deploy_id}/metrics.json?window={window}")
        assert r.status_code == 200
        body = r.json()
        assert body["window"] == window and body["deploy_id"] == deploy_id
        assert set(body["series"]) == {
            "requests_per_s",
            "tokens_per_s",
            "inference_time_p50_s",
            "inference_time_p95_s",
            "queue_time_s",
            "replicas",
            "gpu_utilization",
        }
        other = client.get(
            f"/v1/deployments/{deploy_id}/metrics?window={window}", headers=auth(ADMIN_TOKEN)
        )
        assert other.json()["start"] == body["start"]


def test_another_users_deployment_is_a_404_page_everywhere(client: TestClient, api: Api) -> None:
    alice = api.new_user("alice")
    bob = api.new_user("bob")
    csrf = sign_in(client, alice)
    deploy_id = create(client, csrf, model_name="secret")
    csrf = sign_in(client, bob)
    assert "alice/secret" not in client.get("/ui/deployments").text
    assert "alice/secret" not in client.get("/ui/deployments/rows").text
    missing = client.get("/ui/deployments/d0000000000000000")
    for path in ("", "/status", "/object", "/events", "/logs", "/metrics.json"):
        r = client.get(f"/ui/deployments/{deploy_id}{path}")
        assert r.status_code == 404, path
        assert "alice" not in r.text and "secret" not in r.text.replace("Not found", "")
    # The same page as for an id that does not exist (but for the id itself).
    r = client.get(f"/ui/deployments/{deploy_id}")
    assert r.text.replace(deploy_id, "X") == missing.text.replace("d0000000000000000", "X")
    for action in ("stop", "delete", "settings"):
        r = client.post(
            f"/ui/deployments/{deploy_id}/{action}",
            data={"csrf_token": csrf, "max_instances": "1"},
        )
        assert r.status_code == 404, action
    r = api.client.get(f"/deploy/{deploy_id}", headers=auth(alice))
    assert r.json()["status"] != "deleted" and r.json()["settings"]["max_instances"] == 1


def test_admin_pages_are_refused_to_users(client: TestClient, api: Api) -> None:
    csrf = sign_in(client, api.new_user("erin"))
    page = client.get("/ui/deployments").text
    assert "/ui/admin/users" not in page
    for path in ADMIN_PAGES:
        r = client.get(path)
        assert r.status_code == 403 and "admins only" in r.text
    r = client.post("/ui/admin/users", data={"csrf_token": csrf, "username": "mallory"})
    assert r.status_code == 403
    r = client.post("/ui/admin/users/erin/quota", data={"csrf_token": csrf, "gpu_limit": "64"})
    assert r.status_code == 403
    assert "mallory" not in api.client.get("/v1/users", headers=auth(ADMIN_TOKEN)).text


def test_admins_manage_users_and_quotas(client: TestClient, api: Api) -> None:
    csrf = sign_in(client, ADMIN_TOKEN)
    r = client.post(
        "/ui/admin/users", data={"csrf_token": csrf, "username": "frank", "gpu_limit": "2"}
    )
    assert r.status_code == 200 and 'id="new-user"' in r.text
    token = re.search(r'<pre class="token">(mh_[^<]+)</pre>', r.text)
    assert token
    r = client.post("/ui/admin/users", data={"csrf_token": csrf, "username": "Bad Name"})
    assert r.status_code == 422 and "username" in field_errors(r.text)
    client.post("/ui/admin/users/frank/quota", data={"csrf_token": csrf, "gpu_limit": "6"})
    users = api.client.get("/v1/users", headers=auth(ADMIN_TOKEN)).json()["users"]
    assert next(u for u in users if u["username"] == "frank")["gpu_limit"] == 6
    # A limit and a cap on what the user may set, as PUT /v1/users/{name}/spending-limit.
    client.post(
        "/ui/admin/users/frank/spending-limit",
        data={"csrf_token": csrf, "usd_per_month": "10", "max_usd_per_month": "20"},
    )
    limit = api.client.get("/v1/users/frank/spending-limit", headers=auth(ADMIN_TOKEN)).json()
    assert limit["usd_per_month"] == "10.000000" and limit["max_usd_per_month"] == "20.000000"
    r = client.post(
        "/ui/admin/users/frank/spending-limit",
        data={"csrf_token": csrf, "usd_per_month": "ten"},
    )
    assert r.status_code == 422 and "frank.usd_per_month" in field_errors(r.text)
    client.post("/ui/admin/users/frank/delete", data={"csrf_token": csrf})
    users = api.client.get("/v1/users", headers=auth(ADMIN_TOKEN)).json()["users"]
    assert all(u["username"] != "frank" for u in users)


def test_tokens_usage_invoices_and_the_spending_limit(client: TestClient, api: Api) -> None:
    token = api.new_user("gina")
    csrf = sign_in(client, token)
    r = client.post("/ui/tokens", data={"csrf_token": csrf, "name": "ci"})
    shown = re.search(r'<pre class="token">(mh_[^<]+)</pre>', r.text)
    assert shown and api.client.get("/v1/me", headers=auth(shown.group(1))).status_code == 200
    # Shown once: the list shows only prefixes afterwards.
    assert shown.group(1) not in client.get("/ui/tokens").text
    r = client.post("/ui/tokens", data={"csrf_token": csrf, "name": "ci"})
    assert r.status_code == 409 and "ci" in r.text
    r = client.post(
        "/ui/usage/spending-limit",
        data={"csrf_token": csrf, "usd_per_month": "50", "alert_at": "0.5, 0.9"},
    )
    assert r.status_code == 200 and r.url.path == "/ui/usage"
    limit = api.client.get("/v1/me/spending-limit", headers=auth(token)).json()
    assert limit["usd_per_month"] == "50.000000" and limit["alert_at"] == [0.5, 0.9]
    assert "$50.000000" in r.text
    r = client.post("/ui/usage/spending-limit", data={"csrf_token": csrf, "usd_per_month": "lots"})
    assert r.status_code == 422 and "usd_per_month" in field_errors(r.text)
    usage = client.get("/ui/usage?group_by=gpu")
    assert usage.status_code == 200 and 'id="usage-table"' in usage.text
    assert "end must be after start" in client.get("/ui/usage?start=2030-01-01").text


# Every state-changing form of the console, with a body that would otherwise be accepted.
def _posts(deploy_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("/ui/deployments/new", create_form(model_name="csrf")),
        (f"/ui/deployments/{deploy_id}/settings", {"max_instances": "2"}),
        (f"/ui/deployments/{deploy_id}/stop", {}),
        (f"/ui/deployments/{deploy_id}/delete", {}),
        ("/ui/tokens", {"name": "csrf"}),
        ("/ui/usage/spending-limit", {"usd_per_month": "1"}),
        ("/ui/admin/users", {"username": "csrf"}),
        ("/ui/admin/users/admin/quota", {"gpu_limit": "1"}),
        ("/ui/admin/users/admin/spending-limit", {"usd_per_month": "1"}),
        (f"/ui/deployments/{deploy_id}/chat", {"message": "hi"}),
        ("/ui/adapters", {"name": "csrf", "base": "admin/sim"}),
        ("/ui/logout", {}),
    ]


def test_every_form_is_refused_without_its_csrf_token(client: TestClient, api: Api) -> None:
    csrf = sign_in(client, ADMIN_TOKEN)
    deploy_id = create(client, csrf)
    for path, data in _posts(deploy_id):
        for given in (None, "", "wrong-" + csrf):
            body = dict(data)
            if given is not None:
                body["csrf_token"] = given
            r = client.post(path, data=body)
            assert r.status_code == 403, (path, given, r.status_code)
            assert "security token" in r.text
    # A JSON body carries no form token either.
    r = client.post(f"/ui/deployments/{deploy_id}/stop", json={"csrf_token": csrf})
    assert r.status_code == 403
    dep = api.client.get(f"/deploy/{deploy_id}", headers=auth(ADMIN_TOKEN)).json()
    assert dep["status"] != "deleted" and dep["settings"]["max_instances"] == 1
    names = [
        d["model_name"] for d in api.client.get("/deploy/list", headers=auth(ADMIN_TOKEN)).json()
    ]
    assert names == ["admin/sim"]
    # Still signed in: the logout without a token did nothing.
    assert client.get("/ui/deployments", follow_redirects=False).status_code == 200
    # The sign-in form has its own token.
    client.cookies.clear()
    r = client.post("/ui/login", data={"token": ADMIN_TOKEN})
    assert r.status_code == 403


URL_ATTR = re.compile(r'\b(?:src|href|action|hx-get|hx-post|data-metrics-url)="([^"]*)"')
EXTERNAL = re.compile(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}", re.IGNORECASE)


def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/", "", text, flags=re.DOTALL)


def test_nothing_served_points_outside_the_server(client: TestClient) -> None:
    csrf = sign_in(client, ADMIN_TOKEN)
    deploy_id = create(client, csrf)
    pages = [
        "/ui/login",
        *USER_PAGES,
        *ADMIN_PAGES,
        f"/ui/deployments/{deploy_id}",
        "/ui/nowhere",
    ]
    assets: set[str] = set()
    for path in pages:
        html = client.get(path).text
        for url in URL_ATTR.findall(html):
            assert url.startswith("/") and not url.startswith("//"), (path, url)
            if url.startswith("/ui/static/"):
                assets.add(url)
        # No address of another host anywhere in the page's markup.
        assert not EXTERNAL.search(html.replace("/docs", "")), path
    assert {a.rsplit("/", 1)[-1] for a in assets} >= {
        "htmx.min.js",
        "uPlot.iife.min.js",
        "uPlot.min.css",
        "console.js",
        "console.css",
    }
    for url in assets:
        r = client.get(url)
        assert r.status_code == 200, url
        # Licence banners may name a project's home page; the code itself fetches nothing.
        code = _strip_comments(r.text)
        assert not re.search(r"https?://", code), url
        assert "url(" not in code or not re.search(r"url\((?!['\"]?data:)", code), url


def test_the_chat_panel_answers_through_the_gateway(client: TestClient, api: Api) -> None:
    token = api.new_user("hana")
    csrf = sign_in(client, token)
    deploy_id = create(client, csrf, model_name="talk")
    wait_until(
        lambda: "status-ready" in client.get(f"/ui/deployments/{deploy_id}/status").text,
        timeout=30,
        what="ready",
    )
    assert 'id="chat-form"' in client.get(f"/ui/deployments/{deploy_id}").text
    form = {"csrf_token": csrf, "message": "hello", "max_tokens": "8", "model": "hana/talk"}
    r = client.post(f"/ui/deployments/{deploy_id}/chat", data=form, headers={"HX-Request": "1"})
    assert r.status_code == 200 and 'id="chat-text"' in r.text, r.text
    assert "completion tokens" in r.text
    assert (
        client.post(
            f"/ui/deployments/{deploy_id}/chat", data={**form, "csrf_token": ""}
        ).status_code
        == 403
    )
    r = client.post(f"/ui/deployments/{deploy_id}/chat", data={**form, "message": " "})
    assert r.status_code == 422
    sign_in(client, api.new_user("ivan"))
    csrf = csrf_of(client.get("/ui/tokens").text)
    r = client.post(f"/ui/deployments/{deploy_id}/chat", data={**form, "csrf_token": csrf})
    assert r.status_code == 404


def test_adapters_register_list_and_delete(client: TestClient, api: Api, tmp_path: Path) -> None:
    csrf = sign_in(client, ADMIN_TOKEN)
    body = {
        "model_name": "base",
        "gpu": "CPU",
        "base_model": "smollm2-135m-instruct",
        "engine": "simulator",
        "settings": {"min_instances": 0, "max_instances": 1},
    }
    r = api.client.post("/deploy/llm", json=body, headers=auth(ADMIN_TOKEN))
    assert r.status_code == 201, r.text
    page = client.get("/ui/adapters").text
    assert '<option value="admin/base"' in page
    folder = write_adapter(tmp_path / "fr")
    form = {
        "csrf_token": csrf,
        "name": "french",
        "base": "admin/base",
        "source": "local",
        "local.path": str(folder),
    }
    r = client.post("/ui/adapters", data={**form, "name": "Bad Name"})
    assert r.status_code == 422 and "name" in field_errors(r.text)
    r = client.post("/ui/adapters", data={**form, "local.path": str(tmp_path / "missing")})
    assert r.status_code == 422 and "local.path" in field_errors(r.text), field_errors(r.text)
    r = client.post("/ui/adapters", data=form)
    assert r.status_code == 200 and "admin/french" in r.text, r.text
    # Offered in the chat panel of its base.
    details = client.get(f"/ui/deployments/{_base_id(api)}").text
    assert '<option value="admin/french">' in details
    sign_in(client, api.new_user("jill"))
    assert "admin/french" not in client.get("/ui/adapters").text
    csrf = sign_in(client, ADMIN_TOKEN)
    r = client.post("/ui/adapters/french/delete", data={"csrf_token": csrf})
    assert r.status_code == 200 and "admin/french" not in r.text


def _base_id(api: Api) -> str:
    listed = api.client.get("/deploy/list", headers=auth(ADMIN_TOKEN)).json()
    return str(next(d["deploy_id"] for d in listed if d["model_name"] == "admin/base"))
