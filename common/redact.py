"""The one rule for what counts as a secret, and its use on free text.

Log lines (common/logging.py) drop the values of fields named like a secret; failure messages that quote an
upstream response body (activities/errors.py) apply the same rule to the text, since a 4xx/5xx body often
echoes the request: its JSON fields, its form fields, its headers or a URL with user:password@ in it.
"""

from __future__ import annotations

import re

REDACTED = "[redacted]"
# Keys whose values are secrets whatever the caller meant to log: tokens, passwords, Authorization headers.
SECRET_KEY = re.compile(r"token|passw(or)?d|secret|authorization|api[_-]?key|private[_-]?key|cookie", re.IGNORECASE)

# A key (JSON field, form field, header name) is secret when its name contains a SECRET_KEY word anywhere:
# "private_token", "X-Api-Key" and "client_secret" as well as "token".
_KEY = rf"[\w.-]*(?:{SECRET_KEY.pattern})[\w.-]*"
# Auth schemes kept in front of a redacted credential: they say what was sent without being secret.
_SCHEME = r"(?:Bearer|Basic|Token|Digest|Bot|Negotiate)\s+"

# "key": "value" / 'key': 'value' (JSON, Python reprs); the value may be a string (possibly cut short), a
# scalar, or a flat object or list.
_QUOTED = re.compile(
    rf"""(?P<key>(?P<q>["']){_KEY}(?P=q)\s*:\s*)"""
    r"""(?P<value>"(?:[^"\\]|\\.)*(?:"|$)|'(?:[^'\\]|\\.)*(?:'|$)|\{[^{}]*\}|\[[^\[\]]*\]|[^\s,}\]]+)""",
    re.IGNORECASE,
)
# The same inside a JSON string that holds JSON (an error message quoting the request): \"key\": \"value\".
_ESCAPED = re.compile(
    rf"""(?P<key>\\(?P<q>["']){_KEY}\\(?P=q)\s*:\s*)""" r"""(?P<value>\\"(?:[^"\\]|\\[^"])*\\"|[^\s,}\]\\]+)""",
    re.IGNORECASE,
)
# key=value / key: value (form bodies, query strings, headers echoed in text, YAML).
_BARE = re.compile(
    rf"""(?P<key>(?<![\w.-]){_KEY}\s*[=:]\s*(?:{_SCHEME})?)(?P<value>"[^"]*"|'[^']*'|[^\s&,;"'<>]+)""",
    re.IGNORECASE,
)
# "Bearer abc" anywhere else, e.g. inside an error sentence; an auth parameter (Bearer realm="x") is not a token.
_BEARER = re.compile(r"\b(?P<key>Bearer\s+)(?![\w-]+=[\"'])(?P<value>[\w.~+/=-]+)", re.IGNORECASE)
# scheme://userinfo@host: the user name of a token-only URL is the token, so all of the userinfo goes.
_USERINFO = re.compile(r"(?P<key>\b[a-z][a-z0-9+.-]*://)(?P<value>[^/\s@?#\"'<>]+)@", re.IGNORECASE)


def is_secret_key(name: str) -> bool:
    """True when a field, parameter or header of this name holds a secret (its value must not be shown)."""
    return SECRET_KEY.search(name) is not None


def _quoted_value(match: re.Match[str]) -> str:
    value = match["value"]
    quote = value[0] if value[0] in "\"'" else '"'
    return f"{match['key']}{quote}{REDACTED}{quote}"


def _escaped_value(match: re.Match[str]) -> str:
    quote = '\\"' if match["value"].startswith('\\"') else ""
    return f"{match['key']}{quote}{REDACTED}{quote}"


def _plain_value(match: re.Match[str]) -> str:
    if match["value"] == REDACTED or match["value"].strip("\"'") == REDACTED:
        return match[0]
    return f"{match['key']}{REDACTED}"


def redact_text(text: str) -> str:
    """`text` with the value of every secret-named field, header, Bearer token and URL userinfo replaced.

    For text from outside (an upstream's response body) that goes into a message an operator reads, or
    into a workflow failure stored in Temporal's history. Text with nothing secret comes back unchanged.
    """
    text = _QUOTED.sub(_quoted_value, text)
    text = _ESCAPED.sub(_escaped_value, text)
    text = _BARE.sub(_plain_value, text)
    text = _BEARER.sub(_plain_value, text)
    return _USERINFO.sub(lambda m: f"{m['key']}{REDACTED}@", text)
