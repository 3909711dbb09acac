"""Feedback on a production rollback: one issue in the app repo's tracker (GitHub or GitLab), never two.

A rollback is only useful feedback if the team that shipped the commit hears of it where they work. The
activity opens an issue naming the release, commit, environment, every image rolled back, the failing check,
the revert commit and links; its body carries a hidden marker (`<!-- ferry-release: RELEASE/ENV -->`), and
before creating anything the activity looks for an issue (open or closed) with Ferry's label and that marker,
so a retried or re-run activity returns the issue it opened the first time.

Written from the public API documentation (the specs folder has no tracker APIs):
- GitHub REST, "REST API endpoints for issues", https://docs.github.com/en/rest/issues/issues?apiVersion=2022-11-28
  (#list-repository-issues: GET /repos/{owner}/{repo}/issues with labels, state=all, sort, direction, per_page
  up to 100, page; pull requests are listed too and carry a `pull_request` key. #create-an-issue: POST
  /repos/{owner}/{repo}/issues {title, body, labels} -> 201 with number and html_url; labels are silently
  dropped unless the token may push). Headers: `Accept: application/vnd.github+json`, `X-GitHub-Api-Version`,
  `Authorization: Bearer`. Rate limits (https://docs.github.com/en/rest/using-the-rest-api/rate-limits-for-the-rest-api):
  403 or 429 with `x-ratelimit-remaining: 0` (wait until `x-ratelimit-reset`) or with `retry-after`.
- GitLab REST v4, "Issues API", https://docs.gitlab.com/ee/api/issues.html (source doc/api/issues.md)
  (#list-project-issues: GET /projects/:id/issues with labels (all must match), search + in=description,
  per_page, page; without `state` both opened and closed are listed. #new-issue: POST /projects/:id/issues
  {title, description, labels: comma-separated} -> 201 with iid and web_url). `:id` is the numeric id or the
  URL-encoded path (group%2Fproject); the token goes in the `PRIVATE-TOKEN` header.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.errors import NOT_CONFIGURED, NOT_FOUND, fatal, retryable
from activities.http import ApiClient
from common.config import ConfigError, CredentialRef, Endpoint, FerryConfig
from workflows.types import FeedbackIssueInput, FeedbackIssueResult

GITHUB_API_VERSION = "2022-11-28"
PER_PAGE = 100  # the maximum both APIs allow
# How far back a lookup pages through Ferry's issues. Past this many a duplicate is possible, which beats
# an unbounded scan; the search APIs are not used because their index lags behind a just-created issue.
MAX_PAGES = 10
MAX_RATE_LIMIT_WAIT_SECONDS = 900.0
TITLE_CAUSE_CHARS = 80
BODY_CAUSE_CHARS = 4000  # the body stays far below GitHub's 65536 characters


@dataclass(frozen=True)
class TrackerIssue:
    """An issue as both trackers describe it: its per-project number, web URL and (markdown) body."""

    number: int
    url: str
    body: str


class IssueTracker(Protocol):
    """What the activity needs of a tracker: find Ferry's issue by marker, create one, close the pool."""

    system: str

    async def find(self, marker: str, label: str) -> TrackerIssue | None:
        """The issue (open or closed) labelled `label` whose body contains `marker`, if any."""
        ...

    async def create(self, title: str, body: str, labels: Sequence[str]) -> TrackerIssue:
        """Create an issue and return it."""
        ...

    async def aclose(self) -> None:
        """Close the connection pool."""
        ...


def _read_token(system: str, token: CredentialRef) -> str:
    """The token, read at call time; an unset reference is the operator's to fix, so it does not retry."""
    try:
        return token.read()
    except ConfigError as e:
        raise fatal(f"{system}: {e}; set it on this worker (feedback.token in ferry.yaml)", NOT_CONFIGURED) from None


class GitHubIssues:
    """Issues of one GitHub repository through the REST API (github.com or GitHub Enterprise's /api/v3)."""

    system = "GitHub"

    def __init__(
        self,
        api_url: str,
        repository: str,
        token: CredentialRef,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_seconds: float = 30.0,
    ) -> None:
        self.repository = repository
        self.token = token
        # No credential on the endpoint: the token goes into headers built per request (see _headers).
        self.api = ApiClient(self.system, Endpoint(url=api_url, timeout_seconds=timeout_seconds), transport=transport)
        owner, repo = repository.split("/", 1)
        self.issues_path = f"/repos/{quote(owner, safe='')}/{quote(repo, safe='')}/issues"

    def _headers(self) -> dict[str, str]:
        return {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": GITHUB_API_VERSION,
            "Authorization": f"Bearer {_read_token(self.system, self.token)}",
        }

    async def _request(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        response = await self.api.request(
            method, path, what, ok=lambda r: r.is_success or _rate_limited(r), headers=self._headers(), **kwargs
        )
        if not response.is_success:
            raise retryable(
                f"{self.system}: {what}: rate limited (HTTP {response.status_code}); retrying when the limit resets",
                delay=_rate_limit_wait(response),
            )
        return response

    async def find(self, marker: str, label: str) -> TrackerIssue | None:
        """Ferry's issues newest first, open and closed, until one has the marker."""
        for page in range(1, MAX_PAGES + 1):
            params = {"labels": label, "state": "all", "sort": "created", "direction": "desc"}
            response = await self._request(
                "GET",
                self.issues_path,
                f"list issues of {self.repository} labelled {label}",
                params={**params, "per_page": PER_PAGE, "page": page},
            )
            items = _json_list(response)
            for item in items:
                # The issues list includes pull requests; a PR body quoting the marker is not our issue.
                if "pull_request" not in item and marker in (item.get("body") or ""):
                    return TrackerIssue(int(item["number"]), str(item["html_url"]), item.get("body") or "")
            if len(items) < PER_PAGE:
                return None
        return None

    async def create(self, title: str, body: str, labels: Sequence[str]) -> TrackerIssue:
        """POST the issue (201)."""
        response = await self._request(
            "POST",
            self.issues_path,
            f"create an issue in {self.repository}",
            json={"title": title, "body": body, "labels": list(labels)},
        )
        item = response.json()
        got = {label.get("name") if isinstance(label, dict) else label for label in item.get("labels") or []}
        if labels and labels[0] not in got:
            activity.logger.warning(
                "GitHub dropped the labels of issue #%s (the token may not push to %s): a repeat cannot find it",
                item.get("number"),
                self.repository,
            )
        return TrackerIssue(int(item["number"]), str(item["html_url"]), item.get("body") or "")

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.api.aclose()


class GitLabIssues:
    """Issues of one GitLab project through the REST API v4 (gitlab.com or self-managed)."""

    system = "GitLab"

    def __init__(
        self,
        api_url: str,
        project: str,
        token: CredentialRef,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_seconds: float = 30.0,
    ) -> None:
        self.project = project
        self.token = token
        base = api_url if api_url.endswith("/api/v4") else f"{api_url}/api/v4"
        self.api = ApiClient(self.system, Endpoint(url=base, timeout_seconds=timeout_seconds), transport=transport)
        # A path must be URL-encoded as one segment (group%2Fproject); a numeric id is left as it is.
        self.issues_path = f"/projects/{quote(project, safe='')}/issues"

    def _headers(self) -> dict[str, str]:
        return {"PRIVATE-TOKEN": _read_token(self.system, self.token)}

    async def find(self, marker: str, label: str) -> TrackerIssue | None:
        """Issues with the label whose description matches the marker's text; the marker is re-checked here."""
        # GitLab's basic search is word-based and ignores the comment delimiters, so search for the marker's
        # text and then require the exact marker, so a mere mention of the release cannot be taken for ours.
        search = marker.removeprefix("<!--").removesuffix("-->").strip()
        for page in range(1, MAX_PAGES + 1):
            response = await self.api.request(
                "GET",
                self.issues_path,
                f"list issues of {self.project} labelled {label}",
                headers=self._headers(),
                params={"labels": label, "search": search, "in": "description", "per_page": PER_PAGE, "page": page},
            )
            items = _json_list(response)
            for item in items:
                if marker in (item.get("description") or ""):
                    return TrackerIssue(int(item["iid"]), str(item["web_url"]), item.get("description") or "")
            if len(items) < PER_PAGE:
                return None
        return None

    async def create(self, title: str, body: str, labels: Sequence[str]) -> TrackerIssue:
        """POST the issue (201)."""
        response = await self.api.request(
            "POST",
            self.issues_path,
            f"create an issue in {self.project}",
            headers=self._headers(),
            json={"title": title, "description": body, "labels": ",".join(labels)},
        )
        item = response.json()
        return TrackerIssue(int(item["iid"]), str(item["web_url"]), item.get("description") or "")

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.api.aclose()


def _json_list(response: httpx.Response) -> list[dict[str, Any]]:
    data = response.json()
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []


def _rate_limited(response: httpx.Response) -> bool:
    """GitHub answers an exhausted (primary or secondary) rate limit with 403 as well as 429."""
    if response.status_code not in (403, 429):
        return False
    return response.headers.get("x-ratelimit-remaining") == "0" or "retry-after" in response.headers


def _rate_limit_wait(response: httpx.Response) -> float | None:
    """Seconds to wait: `retry-after`, else until `x-ratelimit-reset` (epoch seconds); capped."""
    retry_after = response.headers.get("retry-after")
    reset = response.headers.get("x-ratelimit-reset")
    try:
        if retry_after is not None:
            seconds = float(retry_after)
        elif reset is not None:
            seconds = float(reset) - time.time()
        else:
            return None
    except ValueError:
        return None
    return min(MAX_RATE_LIMIT_WAIT_SECONDS, max(1.0, seconds))


# --- the issue's text ---


def marker(release_id: str, environment: str) -> str:
    """The hidden line that identifies the issue of one release's rollback in one environment."""
    key = f"{release_id}/{environment}"
    # An HTML comment ends at "--"+">": keep the key from closing it (release ids never contain one anyway).
    key = re.sub(r"-{2,}", "-", key).replace(">", "")
    return f"<!-- ferry-release: {key} -->"


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def issue_title(inp: FeedbackIssueInput) -> str:
    """`Production rollback: <release> (<cause, first line, shortened>)`."""
    cause = _shorten(_first_line(inp.cause), TITLE_CAUSE_CHARS) or "verification failed"
    return f"{inp.environment.capitalize()} rollback: {inp.release_id} ({cause})"


def _fenced(text: str) -> str:
    """`text` in a code fence longer than any backtick run inside it, so the cause cannot break the markdown."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def _link(label: str, url: str) -> str:
    label = re.sub(r"([\[\]\\])", r"\\\1", label)
    if url.startswith(("http://", "https://")):
        return f"- [{label}]({url.replace(')', '%29').replace(' ', '%20')})"
    return f"- {label}: `{url}`"


def issue_body(inp: FeedbackIssueInput) -> str:
    """The markdown body: what ran where, what was rolled back, why, the revert, links, and the marker."""
    cause = inp.cause.strip() or "(no cause recorded)"
    if len(cause) > BODY_CAUSE_CHARS:
        cause = cause[:BODY_CAUSE_CHARS] + "\n… (truncated; see the workflow in the Temporal UI)"
    lines = [
        marker(inp.release_id, inp.environment),
        f"Ferry rolled **{inp.environment}** back after release `{inp.release_id}` failed its verification there.",
        "",
        "| | |",
        "|---|---|",
        f"| Release | `{inp.release_id}` |",
        f"| Commit | `{inp.commit}` |",
        f"| Environment | `{inp.environment}` |",
        f"| Revert commit (GitOps) | `{inp.revert_commit or 'none: nothing was reverted'}` |",
        "",
        "### Failing check",
        "",
        _fenced(cause),
        "",
        "### Rolled back",
        "",
    ]
    lines += [f"- `{service}@{digest}`" for service, digest in sorted(inp.digests.items())] or ["- (no images)"]
    if inp.links:
        lines += ["", "### Links", ""]
        lines += [_link(label, url) for label, url in inp.links.items()]
    lines += ["", "_Opened by Ferry. Closing this issue does not change any environment._"]
    return "\n".join(lines) + "\n"


# --- the activity ---


def build_tracker(cfg: FerryConfig, transport: httpx.AsyncBaseTransport | None = None) -> IssueTracker | None:
    """The client of `feedback.tracker` (None when it is `none`)."""
    fb = cfg.feedback
    if fb.tracker == "none":
        return None
    assert fb.project is not None and fb.token is not None  # guaranteed by config validation
    if fb.tracker == "github":
        return GitHubIssues(fb.api_url, fb.project, fb.token, transport)
    return GitLabIssues(fb.api_url, fb.project, fb.token, transport)


class TrackerActivities:
    """Opens the feedback issue of a rollback in the configured tracker, once per release and environment."""

    def __init__(self, tracker: IssueTracker | None, labels: Sequence[str] = ("ferry", "rollback")) -> None:
        self.tracker = tracker
        self.labels = list(labels)

    @classmethod
    def from_config(cls, cfg: FerryConfig, transport: httpx.AsyncBaseTransport | None = None) -> TrackerActivities:
        """From `feedback:` of ferry.yaml; the registry registers it on `feedback.site`'s worker only."""
        return cls(build_tracker(cfg, transport), cfg.feedback.labels)

    async def aclose(self) -> None:
        """Close the client's connection pool."""
        if self.tracker is not None:
            await self.tracker.aclose()

    @activity.defn(name="tracker.open_issue")
    async def open_issue(self, inp: FeedbackIssueInput) -> FeedbackIssueResult:
        """Return the issue of this release's rollback in this environment, creating it only if there is none."""
        if self.tracker is None:
            raise fatal(
                "feedback.tracker is not configured on this worker; set feedback in ferry.yaml and run "
                "tracker.open_issue on the task queue of feedback.site",
                NOT_CONFIGURED,
            )
        mark = marker(inp.release_id, inp.environment)
        try:
            found = await self.tracker.find(mark, self.labels[0])
            if found is not None:
                return FeedbackIssueResult(url=found.url, number=found.number, created=False)
            issue = await self.tracker.create(issue_title(inp), issue_body(inp), self.labels)
        except ApplicationError as e:
            if e.type != NOT_FOUND:
                raise
            # Both trackers answer 404 for a project the token may not see, not only for a missing one.
            raise fatal(
                f"{e.message}; check feedback.project in ferry.yaml and that the token can see it", NOT_FOUND
            ) from None
        activity.logger.info(
            "%s: opened issue #%s for the rollback of %s in %s",
            self.tracker.system,
            issue.number,
            inp.release_id,
            inp.environment,
        )
        return FeedbackIssueResult(url=issue.url, number=issue.number, created=True)
