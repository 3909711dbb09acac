"""tracker.open_issue: the GitHub and GitLab clients' requests, the activity over the sandbox receiver
(in-process) for both trackers, idempotency, error classification, and the `feedback:` config and plan."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
from sample import sample_config
from temporalio import activity
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities import errors, http
from activities.registry import SiteActivities
from activities.tracker import GitHubIssues, GitLabIssues, TrackerActivities, issue_body, issue_title, marker
from common.config import ConfigError, CredentialRef, parse_config
from common.plan import build_plan
from sandbox.config import STANDINS, sandbox_config
from sandbox.receiver import build_receiver
from workflows.types import FeedbackIssueInput

TOKEN = "ghp_tracker_secret_7Hq2"
ENV = "FERRY_TEST_TRACKER_TOKEN"
REF = CredentialRef(env=ENV)
BASE = "http://tracker.test"
DIGEST_API = "sha256:" + "a" * 64
DIGEST_WEB = "sha256:" + "b" * 64


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, TOKEN)
    monkeypatch.setattr(http, "READ_BACKOFF_SECONDS", 0.0)


def rollback(release: str = "release/shop/0123456789ab", environment: str = "production") -> FeedbackIssueInput:
    return FeedbackIssueInput(
        release_id=release,
        environment=environment,
        commit="0123456789ab" + "c" * 28,
        cause="Argo Rollout api aborted: analysis run failed (error rate 7.2% > 5%)\nsecond line of detail",
        digests={"api": DIGEST_API, "web": DIGEST_WEB},
        links={
            "Temporal UI": "http://127.0.0.1:8233/namespaces/default/workflows/release%2Fshop%2F0123456789ab",
            "E2E build": "https://buildkite.test/acme/e2e/builds/7",
        },
        revert_commit="d" * 40,
    )


def feedback_config(tracker: str, url: str = BASE, project: str = "acme/shop", **extra: Any) -> dict[str, Any]:
    data = sample_config()
    data["feedback"] = {"tracker": tracker, "url": url, "project": project, "token": {"env": ENV}, **extra}
    return data


def over_receiver(tracker: str, receiver: Any, project: str = "acme/shop") -> TrackerActivities:
    cfg = parse_config(feedback_config(tracker, project=project))
    return TrackerActivities.from_config(cfg, transport=httpx.ASGITransport(app=receiver))


# --- the clients' requests (httpx.MockTransport) ---


async def test_github_client_requests() -> None:
    seen: list[httpx.Request] = []
    mark = marker("release/shop/0123456789ab", "production")
    # Page 1 is full (no match), page 2 has a pull request quoting the marker and then the issue.
    page1 = [{"number": n, "html_url": f"https://github.test/acme/shop/issues/{n}", "body": ""} for n in range(100)]
    page2 = [
        {"number": 501, "html_url": "https://github.test/acme/shop/pull/501", "body": mark, "pull_request": {}},
        {"number": 500, "html_url": "https://github.test/acme/shop/issues/500", "body": f"x\n{mark}\ny"},
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "GET":
            return httpx.Response(200, json=page1 if request.url.params["page"] == "1" else page2)
        body = json.loads(request.content)
        return httpx.Response(201, json={"number": 9, "html_url": "https://github.test/i/9", **body})

    client = GitHubIssues("https://api.github.test", "acme/shop", REF, httpx.MockTransport(handler))
    found = await client.find(mark, "ferry")
    assert found is not None and (found.number, found.url) == (500, "https://github.test/acme/shop/issues/500")
    created = await client.create("t", "b", ["ferry", "rollback"])
    assert created.number == 9
    await client.aclose()
    get1, get2, post = seen
    assert get1.url.path == "/repos/acme/shop/issues" and post.url.path == "/repos/acme/shop/issues"
    assert dict(get1.url.params) == {
        "labels": "ferry",
        "state": "all",
        "sort": "created",
        "direction": "desc",
        "per_page": "100",
        "page": "1",
    }
    assert get2.url.params["page"] == "2"
    for request in seen:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert request.headers["Accept"] == "application/vnd.github+json"
        assert request.headers["X-GitHub-Api-Version"] == "2022-11-28"
    assert json.loads(post.content) == {"title": "t", "body": "b", "labels": ["ferry", "rollback"]}


async def test_gitlab_client_requests() -> None:
    seen: list[httpx.Request] = []
    mark = marker("release/shop/0123456789ab", "production")
    listed = [
        # Mentions the release but lacks the exact marker: not Ferry's issue for it.
        {"iid": 3, "web_url": "https://gl.test/acme/shop/-/issues/3", "description": "see release/shop/0123456789ab"},
        {"iid": 2, "web_url": "https://gl.test/acme/shop/-/issues/2", "description": f"{mark}\nbody"},
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "GET":
            return httpx.Response(200, json=listed)
        return httpx.Response(201, json={"iid": 4, "web_url": "https://gl.test/acme/shop/-/issues/4"})

    client = GitLabIssues("https://gl.test", "acme/shop", REF, httpx.MockTransport(handler))
    found = await client.find(mark, "ferry")
    assert found is not None and found.number == 2
    assert (await client.create("t", "b", ["ferry", "rollback"])).number == 4
    await client.aclose()
    get, post = seen
    # The project path is one URL-encoded segment; the API lives under /api/v4.
    assert get.url.raw_path.startswith(b"/api/v4/projects/acme%2Fshop/issues?")
    assert post.url.raw_path == b"/api/v4/projects/acme%2Fshop/issues"
    params = dict(get.url.params)
    assert params["labels"] == "ferry" and params["in"] == "description" and params["per_page"] == "100"
    assert params["search"] == "ferry-release: release/shop/0123456789ab/production"
    for request in seen:
        assert request.headers["PRIVATE-TOKEN"] == TOKEN and "Authorization" not in request.headers
    assert json.loads(post.content) == {"title": "t", "description": "b", "labels": "ferry,rollback"}

    numeric = GitLabIssues("https://gl.test/api/v4", "42", REF, httpx.MockTransport(handler))
    await numeric.create("t", "b", ["ferry"])
    assert seen[-1].url.raw_path == b"/api/v4/projects/42/issues"
    await numeric.aclose()


# --- the activity over the sandbox receiver, both trackers ---


@pytest.mark.parametrize("tracker", ["github", "gitlab"])
async def test_open_issue_twice_creates_one_issue(tracker: str) -> None:
    receiver = build_receiver(tracker_token=TOKEN)
    acts = over_receiver(tracker, receiver)
    env = ActivityEnvironment()
    first = await env.run(acts.open_issue, rollback())
    assert first.created and first.number == 1
    assert first.url == (f"{BASE}/acme/shop/issues/1" if tracker == "github" else f"{BASE}/acme/shop/-/issues/1")
    stored = receiver.state.issues
    assert len(stored) == 1 and stored[0]["tracker"] == tracker
    issue = stored[0]["issue"]
    body = issue["body"] if tracker == "github" else issue["description"]
    assert "<!-- ferry-release: release/shop/0123456789ab/production -->" in body
    assert f"`api@{DIGEST_API}`" in body and f"`web@{DIGEST_WEB}`" in body
    assert "[E2E build](https://buildkite.test/acme/e2e/builds/7)" in body
    assert "[Temporal UI](http://127.0.0.1:8233/namespaces/default/workflows/release%2Fshop%2F0123456789ab)" in body
    assert "d" * 40 in body and "error rate 7.2% > 5%" in body and "0123456789ab" + "c" * 28 in body
    assert issue["title"] == (
        "Production rollback: release/shop/0123456789ab "
        "(Argo Rollout api aborted: analysis run failed (error rate 7.2% > 5%))"
    )
    labels = [label["name"] for label in issue["labels"]] if tracker == "github" else issue["labels"]
    assert labels == ["ferry", "rollback"]

    second = await env.run(acts.open_issue, rollback())
    assert (second.url, second.number, second.created) == (first.url, first.number, False)
    assert len(receiver.state.issues) == 1

    # Closed by the team: still the issue of this rollback, not a reason to open another.
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=receiver), base_url=BASE)
    if tracker == "github":
        r = await client.patch(
            "/repos/acme/shop/issues/1", json={"state": "closed"}, headers={"Authorization": f"Bearer {TOKEN}"}
        )
    else:
        r = await client.put(
            "/api/v4/projects/acme%2Fshop/issues/1", json={"state_event": "close"}, headers={"PRIVATE-TOKEN": TOKEN}
        )
    assert r.json()["state"] == "closed"
    third = await env.run(acts.open_issue, rollback())
    assert (third.number, third.created) == (1, False) and len(receiver.state.issues) == 1

    # Another environment (or release) is another rollback: a second issue, numbered on in the project.
    other = await env.run(acts.open_issue, rollback(environment="staging"))
    assert (other.number, other.created) == (2, True) and len(receiver.state.issues) == 2
    assert other.url.endswith("/2")
    listing = (await client.get("/_sandbox/issues")).json()
    assert [i["issue"]["title"].split(":")[0] for i in listing] == ["Production rollback", "Staging rollback"]
    await client.aclose()
    await acts.aclose()


@pytest.mark.parametrize("tracker", ["github", "gitlab"])
async def test_wrong_or_missing_token_is_fatal_without_the_token(tracker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    receiver = build_receiver(tracker_token="the-real-one")
    acts = over_receiver(tracker, receiver)
    with pytest.raises(ApplicationError) as err:
        await acts.open_issue(rollback())
    assert err.value.non_retryable and err.value.type == errors.AUTH_FAILED
    assert "401" in err.value.message and "credential" in err.value.message
    assert TOKEN not in err.value.message and "the-real-one" not in err.value.message
    assert receiver.state.issues == []

    monkeypatch.delenv(ENV)
    with pytest.raises(ApplicationError) as err:
        await acts.open_issue(rollback())
    assert err.value.non_retryable and err.value.type == errors.NOT_CONFIGURED
    assert f"env:{ENV}" in err.value.message and "feedback.token" in err.value.message
    await acts.aclose()


async def test_receiver_answers_401_without_a_token() -> None:
    receiver = build_receiver()  # no token configured: any token passes, none does not
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=receiver), base_url=BASE) as client:
        assert (await client.get("/repos/acme/shop/issues")).status_code == 401
        assert (await client.get("/api/v4/projects/1/issues")).status_code == 401
        ok = await client.post("/api/v4/projects/1/issues", json={"title": "x"}, headers={"PRIVATE-TOKEN": "any"})
        assert ok.status_code == 201 and ok.json()["iid"] == 1
        # A path that is not URL-encoded is not a project (as on GitLab).
        bad = await client.get("/api/v4/projects/acme/shop/issues", headers={"PRIVATE-TOKEN": "any"})
        assert bad.status_code == 404
        # The webhook part is unchanged.
        hook = await client.post("/hooks/abc", json={"text": "hi"}, headers={"Idempotency-Key": "k"})
        assert hook.status_code == 200 and receiver.state.messages[0]["text"] == "hi"


@pytest.mark.parametrize("tracker", ["github", "gitlab"])
async def test_unavailable_tracker_is_retryable_then_one_issue(tracker: str) -> None:
    receiver = build_receiver(tracker_token=TOKEN)
    acts = over_receiver(tracker, receiver)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=receiver), base_url=BASE) as client:
        await client.post("/_sandbox/issues/faults", json={"status": 503, "times": http.READ_RETRIES})
    with pytest.raises(ApplicationError) as err:
        await acts.open_issue(rollback())
    assert not err.value.non_retryable and err.value.type == errors.UPSTREAM_UNAVAILABLE
    assert "503" in err.value.message and TOKEN not in err.value.message
    assert receiver.state.issues == []
    # The create failing (a POST is not retried in place) is retryable too; the next attempt creates it once.
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=receiver), base_url=BASE) as client:
        await client.post("/_sandbox/issues/faults", json={"status": 502, "times": 1, "method": "POST"})
    with pytest.raises(ApplicationError) as err:
        await acts.open_issue(rollback())
    assert not err.value.non_retryable and "502" in err.value.message and receiver.state.issues == []
    result = await acts.open_issue(rollback())
    assert result.created and len(receiver.state.issues) == 1
    again = await acts.open_issue(rollback())
    assert (again.number, again.created) == (result.number, False) and len(receiver.state.issues) == 1
    await acts.aclose()


async def test_github_rate_limit_is_retryable_with_the_reset_delay() -> None:
    reset = int(time.time()) + 120

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)}
        return httpx.Response(403, json={"message": "API rate limit exceeded"}, headers=headers)

    acts = TrackerActivities(GitHubIssues("https://api.github.test", "acme/shop", REF, httpx.MockTransport(handler)))
    with pytest.raises(ApplicationError) as err:
        await acts.open_issue(rollback())
    assert not err.value.non_retryable and "rate limited" in err.value.message
    assert err.value.next_retry_delay is not None and 100 <= err.value.next_retry_delay.total_seconds() <= 121
    await acts.aclose()


async def test_unknown_project_says_what_to_check() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"message": "404 Project Not Found"})

    acts = TrackerActivities(GitLabIssues("https://gl.test", "acme/nope", REF, httpx.MockTransport(handler)))
    with pytest.raises(ApplicationError) as err:
        await acts.open_issue(rollback())
    assert err.value.non_retryable and err.value.type == errors.NOT_FOUND
    assert "feedback.project" in err.value.message and "acme/nope" in err.value.message
    await acts.aclose()


async def test_not_configured_tracker_is_fatal() -> None:
    acts = TrackerActivities.from_config(parse_config(sample_config()))
    with pytest.raises(ApplicationError) as err:
        await acts.open_issue(rollback())
    assert err.value.non_retryable and err.value.type == errors.NOT_CONFIGURED


# --- the issue's text ---


def test_title_and_body_survive_awkward_causes() -> None:
    inp = rollback()
    inp.cause = "x" * 300 + "\n```\nrm -rf\n```"
    inp.links = {"Argo [CD]": "https://argocd.test/applications/shop-production", "note": "not a url"}
    title = issue_title(inp)
    assert title.startswith("Production rollback: release/shop/0123456789ab (") and title.endswith("…)")
    assert len(title) < 140
    body = issue_body(inp)
    assert "\n````\n" in body  # the fence outgrows the cause's own ``` so the cause cannot close it
    assert r"[Argo \[CD\]](https://argocd.test/applications/shop-production)" in body
    assert "- note: `not a url`" in body
    assert marker("r/--x-->", "prod") == "<!-- ferry-release: r/-x-/prod -->"
    assert issue_title(FeedbackIssueInput("r1", "production", "c", "", {})).endswith("(verification failed)")


# --- config, plan, registry, sandbox ---


def test_feedback_config_is_validated() -> None:
    cases = [
        ({"tracker": "github"}, ["'project' is required", "'token'"]),
        ({"tracker": "github", "project": "just-a-name", "token": {"env": ENV}}, ["must be owner/repo"]),
        ({"tracker": "gitlab", "project": "a b", "token": {"env": ENV}}, ["numeric id or a group/project"]),
        ({"tracker": "jira"}, ["feedback.tracker"]),
        ({"tracker": "github", "project": "a/b", "token": {"env": ENV}, "url": "api.github.com"}, ["feedback.url"]),
        ({"tracker": "github", "project": "a/b", "token": {"env": ENV}, "labels": ["a,b"]}, ["no comma"]),
        ({"tracker": "github", "project": "a/b", "token": {"env": ENV}, "labels": []}, ["feedback.labels"]),
        ({"tracker": "github", "project": "a/b", "token": "ghp_inline"}, ["feedback.token"]),
    ]
    for feedback, expected in cases:
        data = sample_config()
        data["feedback"] = feedback
        with pytest.raises(ConfigError) as err:
            parse_config(data)
        for text in expected:
            assert text in str(err.value), (feedback, str(err.value))
        assert "ghp_inline" not in str(err.value)
    data = sample_config()
    del data["sites"]["cloud"]
    data["environments"] = {"testbed": data["environments"]["testbed"]}
    for svc in data["services"].values():
        if "argocd_apps" in svc:
            svc["argocd_apps"] = {"testbed": svc["argocd_apps"]["testbed"]}
    data["feedback"] = {"tracker": "gitlab", "project": "42", "token": {"env": ENV}, "site": "cloud"}
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert "feedback.site: site 'cloud' is not configured" in str(err.value)
    cfg = parse_config(feedback_config("gitlab", url="https://gitlab.example.com/", project="platform/apps/shop"))
    assert cfg.feedback.api_url == "https://gitlab.example.com" and cfg.feedback.labels == ["ferry", "rollback"]
    data = sample_config()
    data["feedback"] = {"tracker": "github", "project": "acme/shop", "token": {"env": ENV}}
    assert parse_config(data).feedback.api_url == "https://api.github.com"


def test_plan_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEMPORAL_NAMESPACE", raising=False)
    data = sample_config()
    data["temporal"].update(ui_url="https://temporal-ui.test", namespace="releases")
    data["temporal"]["task_queues"] = {"onprem": "q-onprem", "cloud": "q-cloud"}
    plan = build_plan(parse_config(data))
    assert (plan.feedback_queue, plan.ui_url, plan.temporal_namespace) == ("", "https://temporal-ui.test", "releases")
    data["feedback"] = {"tracker": "github", "project": "acme/shop", "token": {"env": ENV}}
    assert build_plan(parse_config(data)).feedback_queue == "q-onprem"
    data["feedback"]["site"] = "cloud"
    data["temporal"]["ui_url"] = None
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "from-env")
    plan = build_plan(parse_config(data))
    assert (plan.feedback_queue, plan.ui_url, plan.temporal_namespace) == ("q-cloud", "", "from-env")
    assert TOKEN not in repr(plan)


def test_registered_on_the_feedback_site_only(tmp_path: Any) -> None:
    def names(site: str, data: dict[str, Any]) -> set[str]:
        data["workdir"] = str(tmp_path)
        acts = SiteActivities.from_config(parse_config(data), site)
        return {activity._Definition.must_from_callable(f).name for f in acts.functions}

    assert "tracker.open_issue" not in names("onprem", sample_config()) | names("cloud", sample_config())
    assert "tracker.open_issue" in names("onprem", feedback_config("github"))
    assert "tracker.open_issue" not in names("cloud", feedback_config("github"))
    assert "tracker.open_issue" in names("cloud", feedback_config("gitlab", site="cloud"))


def test_sandbox_config_turns_feedback_on() -> None:
    common: dict[str, Any] = {
        "urls": {name: f"http://127.0.0.1:{18101 + i}" for i, name in enumerate(STANDINS)},
        "credentials": {name: {"env": f"T_{i}"} for i, name in enumerate(STANDINS)},
        "app_repo": "/tmp/app.git",
        "gitops_repo": "/tmp/gitops.git",
        "temporal_address": "localhost:7233",
        "ui_url": None,
        "workdir": "/tmp/w",
    }
    assert parse_config(sandbox_config(**common)).feedback.tracker == "none"
    ref = {"file": "/tmp/sandbox/secrets/tracker"}
    cfg = parse_config(sandbox_config(**common, tracker_url="http://127.0.0.1:18151", tracker_token=ref))
    assert cfg.feedback.tracker == "github" and cfg.feedback.api_url == "http://127.0.0.1:18151"
    assert cfg.feedback.token == CredentialRef(**ref) and cfg.feedback.site == "onprem"
    cfg = parse_config(sandbox_config(**common, tracker_url="http://x.test", tracker_token=ref, tracker="gitlab"))
    assert cfg.feedback.tracker == "gitlab" and cfg.feedback.project == "acme/shop"
