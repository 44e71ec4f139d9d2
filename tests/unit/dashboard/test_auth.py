"""Admin login, session cookies, CSRF and login throttling, through real HTTP requests."""

from __future__ import annotations

from http.cookies import SimpleCookie

import pytest
from fastapi.testclient import TestClient

from modelmint.dashboard.auth import LOGIN_COOKIE, SESSION_COOKIE
from modelmint.storage import Database
from tests.unit.dashboard.conftest import ADMIN_TOKEN, Dashboard, build_app, form_token

PAGES = [
    "/dashboard/keys",
    "/dashboard/customers",
    "/dashboard/invoices",
]


def _cookie(response_headers: list[str], name: str) -> SimpleCookie:
    for header in response_headers:
        if header.startswith(name + "="):
            cookie: SimpleCookie = SimpleCookie()
            cookie.load(header)
            return cookie
    raise AssertionError(f"no {name} cookie set")


@pytest.mark.parametrize("path", PAGES)
def test_pages_redirect_to_login_without_a_session(dashboard: Dashboard, path: str) -> None:
    response = dashboard.client.get(path + "?organization=x", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == f"/dashboard/login?next={path}%3Forganization%3Dx"


def test_logging_in_sets_a_strict_httponly_cookie_without_the_token(dashboard: Dashboard) -> None:
    page = dashboard.client.get("/dashboard/login")
    response = dashboard.client.post(
        "/dashboard/login",
        data={"csrf_token": form_token(page.text), "token": ADMIN_TOKEN, "next": "/dashboard/keys"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/keys"
    cookie = _cookie(response.headers.get_list("set-cookie"), SESSION_COOKIE)[SESSION_COOKIE]
    assert cookie["httponly"] is True
    assert cookie["samesite"].lower() == "strict"
    assert cookie["path"] == "/dashboard"
    assert not cookie["secure"]  # plain http here; see the https test
    assert ADMIN_TOKEN not in cookie.value
    assert dashboard.client.get("/dashboard/keys").status_code == 200


def test_the_session_cookie_is_secure_over_https(shared_database: Database) -> None:
    with TestClient(build_app(shared_database), base_url="https://testserver") as client:
        page = client.get("/dashboard/login")
        assert _cookie(page.headers.get_list("set-cookie"), LOGIN_COOKIE)[LOGIN_COOKIE]["secure"]
        response = client.post(
            "/dashboard/login",
            data={"csrf_token": form_token(page.text), "token": ADMIN_TOKEN},
            follow_redirects=False,
        )
        cookie = _cookie(response.headers.get_list("set-cookie"), SESSION_COOKIE)
        assert cookie[SESSION_COOKIE]["secure"] is True


def test_a_wrong_token_is_refused_without_a_session(dashboard: Dashboard) -> None:
    page = dashboard.client.get("/dashboard/login")
    response = dashboard.client.post(
        "/dashboard/login",
        data={"csrf_token": form_token(page.text), "token": "not-the-token"},
        follow_redirects=False,
    )
    assert response.status_code == 401
    assert "not the admin token" in response.text
    assert SESSION_COOKIE + "=" not in response.headers.get("set-cookie", "")
    assert dashboard.client.get("/dashboard/keys", follow_redirects=False).status_code == 303


def test_a_login_post_without_its_form_cookie_is_refused(dashboard: Dashboard) -> None:
    # A forged cross-site login: the attacker has a form token of their own, but the
    # victim's browser does not hold the matching login cookie.
    attacker = dashboard.client_from("198.51.100.9")
    forged = form_token(attacker.get("/dashboard/login").text)
    response = dashboard.client.post(
        "/dashboard/login",
        data={"csrf_token": forged, "token": ADMIN_TOKEN},
        follow_redirects=False,
    )
    assert response.status_code == 403
    assert SESSION_COOKIE + "=" not in response.headers.get("set-cookie", "")


def test_repeated_failures_block_the_address_even_with_the_right_token(
    dashboard: Dashboard,
) -> None:
    guesser = dashboard.client_from("203.0.113.7")
    for attempt in range(5):
        page = guesser.get("/dashboard/login")
        wrong = guesser.post(
            "/dashboard/login",
            data={"csrf_token": form_token(page.text), "token": f"guess{attempt}"},
        )
        assert wrong.status_code == 401
    page = guesser.get("/dashboard/login")
    blocked = guesser.post(
        "/dashboard/login",
        data={"csrf_token": form_token(page.text), "token": ADMIN_TOKEN},
        follow_redirects=False,
    )
    assert blocked.status_code == 429
    assert int(blocked.headers["retry-after"]) > 0
    assert SESSION_COOKIE + "=" not in blocked.headers.get("set-cookie", "")
    # Another address is not affected.
    dashboard.login(dashboard.client_from("203.0.113.8"))


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/dashboard/invoices?status=paid", "/dashboard/invoices?status=paid"),
        ("https://evil.example/dashboard", "/dashboard"),
        ("//evil.example/dashboard", "/dashboard"),
        ("/dashboard//evil.example", "/dashboard"),
        ("/admin/keys", "/dashboard"),
        ("/dashboardx", "/dashboard"),
        ("/dashboard\\@evil.example", "/dashboard"),
    ],
)
def test_login_only_redirects_inside_the_dashboard(
    dashboard: Dashboard, target: str, expected: str
) -> None:
    page = dashboard.client.get("/dashboard/login")
    response = dashboard.client.post(
        "/dashboard/login",
        data={"csrf_token": form_token(page.text), "token": ADMIN_TOKEN, "next": target},
        follow_redirects=False,
    )
    assert response.headers["location"] == expected


def test_posts_without_the_csrf_token_are_refused(dashboard: Dashboard) -> None:
    dashboard.login()
    for data in ({}, {"csrf_token": "forged"}):
        response = dashboard.client.post(
            "/dashboard/keys", data={**data, "organization": "acme"}, follow_redirects=False
        )
        assert response.status_code == 403
        assert "reload the page" in response.text


def test_the_csrf_token_of_another_session_is_refused(dashboard: Dashboard) -> None:
    other = dashboard.client_from("192.0.2.10")
    their_token = dashboard.login(other)
    dashboard.login()
    response = dashboard.client.post(
        "/dashboard/logout", data={"csrf_token": their_token}, follow_redirects=False
    )
    assert response.status_code == 403


def test_posts_from_another_origin_are_refused_even_with_the_token(dashboard: Dashboard) -> None:
    token = dashboard.login()
    response = dashboard.client.post(
        "/dashboard/logout",
        data={"csrf_token": token},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert response.status_code == 403
    same = dashboard.client.post(
        "/dashboard/logout",
        data={"csrf_token": token},
        headers={"Origin": "http://testserver"},
        follow_redirects=False,
    )
    assert same.status_code == 303


def test_logout_ends_the_session_for_a_copied_cookie_too(dashboard: Dashboard) -> None:
    token = dashboard.login()
    stolen = dashboard.client.cookies.get(SESSION_COOKIE, path="/dashboard")
    assert stolen
    response = dashboard.client.post(
        "/dashboard/logout", data={"csrf_token": token}, follow_redirects=False
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/login"
    replay = dashboard.client_from("192.0.2.99")
    replay.cookies.set(SESSION_COOKIE, stolen, path="/dashboard")
    assert replay.get("/dashboard/keys", follow_redirects=False).status_code == 303


def test_a_form_body_that_is_not_url_encoded_is_refused(dashboard: Dashboard) -> None:
    token = dashboard.login()
    response = dashboard.client.post(
        "/dashboard/logout", json={"csrf_token": token}, follow_redirects=False
    )
    assert response.status_code == 400


def test_pages_carry_headers_that_keep_them_out_of_caches_and_frames(
    dashboard: Dashboard,
) -> None:
    login_page = dashboard.client.get("/dashboard/login")
    dashboard.login()
    for response in (login_page, dashboard.client.get("/dashboard/keys")):
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["x-frame-options"] == "DENY"
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy


def test_the_dashboard_is_closed_without_an_admin_token(shared_database: Database) -> None:
    with TestClient(build_app(shared_database, admin_token=None)) as client:
        assert client.get("/dashboard/login").status_code == 503
        assert client.get("/dashboard/keys", follow_redirects=False).status_code == 503


def test_the_admin_api_does_not_accept_the_dashboard_cookie(dashboard: Dashboard) -> None:
    from modelmint.gateway.routes import admin

    dashboard.app.include_router(admin.router)
    dashboard.login()
    assert dashboard.client.get("/admin/keys").status_code == 401
