"""The sandbox's receiver of what Ferry sends out: Slack-compatible webhook messages and tracker issues.

Webhook: `POST /hooks/{token}` stores a message (a redelivery with the same Idempotency-Key is stored once);
`GET /_sandbox/messages` lists them.

Issue trackers (feedback on a production rollback), the subset `activities/tracker.py` uses, written from the
same public docs it cites:
- GitHub REST: `GET|POST /repos/{owner}/{repo}/issues` (list: labels, state open|closed|all (default open),
  sort=created, direction, per_page, page; create: title, body, labels) and `GET|PATCH .../issues/{number}`;
  numbers count per repository; `html_url`. Token: `Authorization: Bearer` (or `token`).
- GitLab REST v4: `GET|POST /api/v4/projects/{id}/issues` (list: labels, search + in, state opened|closed|all
  (default all), per_page, page; create: title, description, labels comma-separated) and
  `GET|PUT .../issues/{iid}` (state_event close|reopen); `{id}` is a numeric id or the URL-encoded path;
  `iid` counts per project; `web_url`. Token: `PRIVATE-TOKEN` (or `Authorization: Bearer`).
A request without a token gets 401; with a token configured (`tracker_token`, or FERRY_SANDBOX_TOKEN_TRACKER
for `python -m sandbox.receiver`) only that token passes. `GET /_sandbox/issues` lists every issue kept;
`POST /_sandbox/issues/faults {"status": 503, "times": N, "method": "POST"}` makes the next N tracker
requests (of that method, or any) fail.
Where the docs are silent (error bodies, ordering ties) the stand-in answers as the services do in practice.

`python -m sandbox.receiver --port N` serves it.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import os
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

TOKEN_ENV = "FERRY_SANDBOX_TOKEN_TRACKER"
GITLAB_PREFIX = "/api/v4/projects/"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _page(items: list[dict[str, Any]], request: Request, default_per_page: int) -> list[dict[str, Any]]:
    try:
        per_page = max(1, min(100, int(request.query_params.get("per_page", default_per_page))))
        page = max(1, int(request.query_params.get("page", 1)))
    except ValueError:
        per_page, page = default_per_page, 1
    return items[(page - 1) * per_page : page * per_page]


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def build_receiver(tracker_token: str | None = None) -> Starlette:
    """The receiver app; its state lives in the app (`app.state.messages`, `app.state.issues`)."""
    messages: list[dict[str, Any]] = []
    keys: set[str] = set()
    issues: list[dict[str, Any]] = []  # {"tracker", "project", "issue": the JSON the API returns}
    faults: list[tuple[int, str]] = []  # (status, method or "" for any)

    async def receive(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "invalid_payload"}, status_code=400)
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            return JSONResponse({"error": "no_text"}, status_code=400)
        key = request.headers.get("Idempotency-Key", "")
        if not key or key not in keys:
            keys.add(key)
            messages.append({"path": request.url.path, "key": key, **body})
        return JSONResponse({"ok": True})

    async def listing(_: Request) -> JSONResponse:
        return JSONResponse(messages)

    # --- trackers ---

    def token_of(request: Request, tracker: str) -> str:
        if tracker == "gitlab" and request.headers.get("private-token"):
            return request.headers["private-token"].strip()
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        allowed = ("bearer", "token") if tracker == "github" else ("bearer",)
        return value.strip() if scheme.lower() in allowed else ""

    def refused(request: Request, tracker: str) -> Response | None:
        """A fault, or 401 for a missing or wrong token; None when the request may proceed."""
        fault = next((f for f in faults if f[1] in ("", request.method)), None)
        if fault is not None:
            faults.remove(fault)
            return JSONResponse({"message": "Service Unavailable (sandbox fault)"}, status_code=fault[0])
        given = token_of(request, tracker)
        if given and (tracker_token is None or hmac.compare_digest(given.encode(), tracker_token.encode())):
            return None
        if tracker == "github":
            message = "Bad credentials" if given else "Requires authentication"
            return JSONResponse(
                {"message": message, "documentation_url": "https://docs.github.com/rest", "status": "401"},
                status_code=401,
            )
        return JSONResponse({"message": "401 Unauthorized"}, status_code=401)

    def of(tracker: str, project: str) -> list[dict[str, Any]]:
        return [i["issue"] for i in issues if i["tracker"] == tracker and i["project"] == project]

    def web_base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    async def body_of(request: Request) -> dict[str, Any] | None:
        try:
            body = await request.json()
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    # GitHub

    async def github_issues(request: Request) -> Response:
        if (refusal := refused(request, "github")) is not None:
            return refusal
        project = f"{request.path_params['owner']}/{request.path_params['repo']}"
        mine = of("github", project)
        if request.method == "POST":
            body = await body_of(request)
            if body is None or not isinstance(body.get("title"), str) or not body["title"].strip():
                return JSONResponse(
                    {
                        "message": "Validation Failed",
                        "errors": [{"resource": "Issue", "field": "title", "code": "missing_field"}],
                    },
                    status_code=422,
                )
            number = len(mine) + 1
            labels = [str(label) for label in body.get("labels") or []]
            issue = {
                "id": len(issues) + 1,
                "number": number,
                "title": body["title"],
                "body": body.get("body") or "",
                "labels": [{"name": label} for label in labels],
                "state": "open",
                "html_url": f"{web_base(request)}/{project}/issues/{number}",
                "url": f"{web_base(request)}/repos/{project}/issues/{number}",
                "created_at": _now(),
            }
            issues.append({"tracker": "github", "project": project, "issue": issue})
            return JSONResponse(issue, status_code=201)
        q = request.query_params
        state = q.get("state", "open")
        wanted = _split(q.get("labels"))
        found = [
            i
            for i in mine
            if (state == "all" or i["state"] == state) and set(wanted) <= {label["name"] for label in i["labels"]}
        ]
        found.sort(key=lambda i: i["number"], reverse=q.get("direction", "desc") == "desc")
        return JSONResponse(_page(found, request, 30))

    async def github_issue(request: Request) -> Response:
        if (refusal := refused(request, "github")) is not None:
            return refusal
        project = f"{request.path_params['owner']}/{request.path_params['repo']}"
        issue = next((i for i in of("github", project) if i["number"] == request.path_params["number"]), None)
        if issue is None:
            return JSONResponse({"message": "Not Found", "status": "404"}, status_code=404)
        if request.method == "PATCH":
            body = await body_of(request) or {}
            if body.get("state") in ("open", "closed"):
                issue["state"] = body["state"]
        return JSONResponse(issue)

    # GitLab

    async def gitlab(request: Request) -> Response:
        if (refusal := refused(request, "gitlab")) is not None:
            return refusal
        # Route on the raw path: the project's path arrives URL-encoded as ONE segment (group%2Fproject).
        raw = request.scope.get("raw_path") or request.url.path.encode()
        parts = raw.decode().split("?", 1)[0].removeprefix(GITLAB_PREFIX).split("/")
        if len(parts) not in (2, 3) or parts[1] != "issues":
            return JSONResponse({"message": "404 Project Not Found"}, status_code=404)
        project = unquote(parts[0])
        mine = of("gitlab", project)
        if len(parts) == 3:
            issue = next((i for i in mine if str(i["iid"]) == parts[2]), None)
            if issue is None:
                return JSONResponse({"message": "404 Not found"}, status_code=404)
            if request.method == "PUT":
                event = (await body_of(request) or {}).get("state_event")
                issue["state"] = {"close": "closed", "reopen": "opened"}.get(event, issue["state"])
            return JSONResponse(issue)
        if request.method == "POST":
            body = await body_of(request)
            if body is None or not isinstance(body.get("title"), str) or not body["title"].strip():
                return JSONResponse({"error": "title is missing"}, status_code=400)
            labels = body.get("labels") or []
            labels = _split(labels) if isinstance(labels, str) else [str(label) for label in labels]
            iid = len(mine) + 1
            issue = {
                "id": len(issues) + 1,
                "iid": iid,
                "project_id": project,
                "title": body["title"],
                "description": body.get("description") or "",
                "labels": labels,
                "state": "opened",
                "web_url": f"{web_base(request)}/{project}/-/issues/{iid}",
                "created_at": _now(),
            }
            issues.append({"tracker": "gitlab", "project": project, "issue": issue})
            return JSONResponse(issue, status_code=201)
        q = request.query_params
        state = q.get("state", "all")
        wanted = _split(q.get("labels"))
        search = (q.get("search") or "").lower()
        fields = _split(q.get("in")) or ["title", "description"]
        found = [
            i
            for i in mine
            if (state == "all" or i["state"] == state)
            and set(wanted) <= set(i["labels"])
            and (not search or any(search in str(i.get(f, "")).lower() for f in fields))
        ]
        found.sort(key=lambda i: i["iid"], reverse=q.get("sort", "desc") == "desc")
        return JSONResponse(_page(found, request, 20))

    async def issue_listing(_: Request) -> JSONResponse:
        return JSONResponse(issues)

    async def issue_faults(request: Request) -> JSONResponse:
        body = await body_of(request) or {}
        fault = (int(body.get("status", 503)), str(body.get("method", "")).upper())
        faults.extend([fault] * int(body.get("times", 1)))
        return JSONResponse({"pending": len(faults)})

    app = Starlette(
        routes=[
            Route("/hooks/{token}", receive, methods=["POST"]),
            Route("/_sandbox/messages", listing),
            Route("/repos/{owner}/{repo}/issues", github_issues, methods=["GET", "POST"]),
            Route("/repos/{owner}/{repo}/issues/{number:int}", github_issue, methods=["GET", "PATCH"]),
            Route(GITLAB_PREFIX + "{rest:path}", gitlab, methods=["GET", "POST", "PUT"]),
            Route("/_sandbox/issues", issue_listing),
            Route("/_sandbox/issues/faults", issue_faults, methods=["POST"]),
        ]
    )
    app.state.messages = messages
    app.state.issues = issues
    app.state.faults = faults
    return app


def main() -> None:
    """Serve the receiver on 127.0.0.1."""
    import uvicorn

    parser = argparse.ArgumentParser(description="Sandbox receiver: Slack-compatible webhook, GitHub/GitLab issues.")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = build_receiver(os.environ.get(TOKEN_ENV) or None)
    config = uvicorn.Config(app, host="127.0.0.1", port=args.port, log_level="warning")
    asyncio.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
