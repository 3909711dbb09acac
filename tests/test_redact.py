"""Redaction of secrets in free text: the rule of common/redact.py, and upstream bodies in failure messages."""

from __future__ import annotations

import httpx
import pytest

from activities.errors import AUTH_FAILED, BAD_REQUEST, NOT_FOUND, UPSTREAM_UNAVAILABLE, classify_response
from common.logging import redact_secrets
from common.redact import REDACTED, SECRET_KEY, is_secret_key, redact_text

R = REDACTED

CASES = [
    # JSON bodies
    ('{"token": "abc"}', f'{{"token": "{R}"}}'),
    ('{"token":"abc","ok":1}', f'{{"token":"{R}","ok":1}}'),
    ('{"error": "bad", "api_key": "k-123"}', f'{{"error": "bad", "api_key": "{R}"}}'),
    ('{"private_token": "glpat-xyz"}', f'{{"private_token": "{R}"}}'),
    ('{"access_token": "ya29.a0", "expires_in": 3600}', f'{{"access_token": "{R}", "expires_in": 3600}}'),
    (
        '{"client_secret": "s", "nested": {"Password": "p"}}',
        f'{{"client_secret": "{R}", "nested": {{"Password": "{R}"}}}}',
    ),
    ('{"secret": {"value": "v"}, "keep": [1]}', f'{{"secret": "{R}", "keep": [1]}}'),
    ('{"Authorization": ["Bearer xyz"]}', f'{{"Authorization": "{R}"}}'),
    ('{"password": 123456}', f'{{"password": "{R}"}}'),
    ('{"token": "a\\"b"}', f'{{"token": "{R}"}}'),  # an escaped quote does not end the value
    ('{"token": "cut-off-by-the-limit', f'{{"token": "{R}"'),
    ("{'password': 'hunter2'}", f"{{'password': '{R}'}}"),  # a Python repr
    ('{"msg": "echo {\\"token\\":\\"abc\\"}"}', f'{{"msg": "echo {{\\"token\\":\\"{R}\\"}}"}}'),  # JSON in JSON
    # form bodies and query strings
    ("username=bob&password=hunter2&grant_type=password", f"username=bob&password={R}&grant_type=password"),
    (
        "grant_type=client_credentials&client_secret=s3&scope=x",
        f"grant_type=client_credentials&client_secret={R}&scope=x",
    ),
    ("GET /v1/x?access_token=abc&page=2 -> 401", f"GET /v1/x?access_token={R}&page=2 -> 401"),
    ('passwd="two words" next', f"passwd={R} next"),
    # headers echoed in text
    ("Authorization: Bearer xyz", f"Authorization: Bearer {R}"),
    ("authorization: Basic dXNlcjpwYXNz", f"authorization: Basic {R}"),
    ("PRIVATE-TOKEN: glpat-abc\nX-Api-Key: k1\nAccept: */*", f"PRIVATE-TOKEN: {R}\nX-Api-Key: {R}\nAccept: */*"),
    ("Cookie: session=abc", f"Cookie: {R}"),
    (
        "request had {Authorization: Bearer eyJ.x.y, Accept: json}",
        f"request had {{Authorization: Bearer {R}, Accept: json}}",
    ),
    ("invalid credentials: got Bearer eyJhbGciOi.x.y", f"invalid credentials: got Bearer {R}"),
    # URLs with userinfo
    (
        "fatal: could not read https://user:pass@git.example.com/x.git",
        f"fatal: could not read https://{R}@git.example.com/x.git",
    ),
    ("clone https://ghp_abc123@github.com/x.git failed", f"clone https://{R}@github.com/x.git failed"),
    ('{"url": "http://admin:pw@10.0.0.1:8080/api"}', f'{{"url": "http://{R}@10.0.0.1:8080/api"}}'),
]

CLEAN = [
    '{"message": "404 Project Not Found"}',
    '{"errors":[{"code":"NOT_FOUND","message":"repository shop/api not found"}]}',
    "upstream connect error or disconnect/reset before headers; see https://status.example.com/x?id=1",
    'WWW-Authenticate: Bearer realm="harbor", service="harbor-registry"',
    "contact ops@example.com about /v2/shop/api/manifests/sha256:abc",
    "",
    f"token={R}",  # redacting twice changes nothing
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_secret_values_are_redacted(text: str, expected: str) -> None:
    assert redact_text(text) == expected
    assert redact_text(expected) == expected


@pytest.mark.parametrize("text", CLEAN)
def test_text_without_secrets_is_unchanged(text: str) -> None:
    assert redact_text(text) == text


@pytest.mark.parametrize(
    ("name", "secret"),
    [
        ("token", True),
        ("private_token", True),
        ("X-Auth-Token", True),
        ("password", True),
        ("harbor_passwd", True),
        ("client_secret", True),
        ("Authorization", True),
        ("api_key", True),
        ("X-Api-Key", True),
        ("apikey", True),
        ("private-key", True),
        ("Set-Cookie", True),
        ("service", False),
        ("username", False),
        ("message", False),
        ("author", False),
    ],
)
def test_one_rule_for_logs_and_text(name: str, secret: bool) -> None:
    assert is_secret_key(name) is secret and bool(SECRET_KEY.search(name)) is secret
    logged = redact_secrets(None, "info", {"event": "x", name: "v"})
    assert (logged[name] == REDACTED) is secret
    assert (redact_text(f'{{"{name}": "v"}}') == f'{{"{name}": "{REDACTED}"}}') is secret


def response(status: int, text: str, content_type: str = "application/json") -> httpx.Response:
    request = httpx.Request("POST", "https://harbor.onprem.internal/api/v2.0/projects?token=in-the-url")
    return httpx.Response(status, text=text, headers={"Content-Type": content_type}, request=request)


@pytest.mark.parametrize(
    ("status", "error_type"), [(400, BAD_REQUEST), (404, NOT_FOUND), (422, BAD_REQUEST), (503, UPSTREAM_UNAVAILABLE)]
)
@pytest.mark.parametrize(
    "body",
    [
        '{"error": "invalid", "token": "s3cr3t-value"}',
        '{"detail": "Authorization: Bearer s3cr3t-value was rejected"}',
        "password=s3cr3t-value&user=bob",
        '{"api_key": "s3cr3t-value"}',
        "could not clone https://bot:s3cr3t-value@git.internal/app.git",
    ],
)
def test_failure_messages_quote_upstream_bodies_redacted(status: int, error_type: str, body: str) -> None:
    error = classify_response("harbor", response(status, body), "create project")
    assert error.type == error_type
    assert "s3cr3t-value" not in error.message and REDACTED in error.message
    assert error.message.startswith(f"harbor: create project: POST /api/v2.0/projects -> HTTP {status}: ")
    assert "in-the-url" not in error.message  # only the path is named, never the query


def test_body_is_redacted_before_it_is_cut() -> None:
    # The secret straddles the 300-character cut: redacting afterwards would leave its start readable.
    body = '{"message": "' + "x" * 270 + '", "token": "s3cr3t-value-that-straddles-the-cut"}'
    assert body[:300].endswith('"token": "s3cr')
    error = classify_response("argocd", response(400, body), "sync")
    assert "s3cr" not in error.message and error.message.endswith('"token": "[red')


def test_clean_bodies_are_quoted_as_they_are() -> None:
    error = classify_response("sonarqube", response(404, '{"errors":[{"msg":"Component key not found"}]}'), "read")
    assert error.message.endswith(': {"errors":[{"msg":"Component key not found"}]}')
    refused = classify_response("harbor", response(401, '{"token": "s3cr3t-value"}'), "login")
    assert refused.type == AUTH_FAILED and "s3cr3t" not in refused.message
