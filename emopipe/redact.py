"""Sources as they may be shown: camera credentials never leave the config.

Every place that shows a source (log lines, errors, ``emopipe run``'s start line,
``emopipe check-config``) shows ``redact(uri)``: the user info of a URL replaced by
``***:***`` and the values of secret-looking query parameters by ``***``. Paths, webcam
indices and URLs without credentials are shown as they are. Written here rather than taken
from a library: ``urllib.parse`` splits the URL, and the rule is a few lines.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
#: query parameters whose values are secrets (compared lower-case, ``-`` read as ``_``)
SECRET_PARAMETERS = frozenset(
    {
        "password",
        "passwd",
        "pass",
        "pwd",
        "token",
        "access_token",
        "auth",
        "authorization",
        "key",
        "api_key",
        "apikey",
        "secret",
        "signature",
        "sig",
        "credentials",
        "user",
        "username",
        "login",
    }
)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def redact(uri: str) -> str:
    """``uri`` with its credentials masked (anything that is not a URL: unchanged)."""
    if not _SCHEME.match(uri):
        return uri
    parts = urlsplit(uri)
    userinfo, at, hostport = parts.netloc.rpartition("@")  # a password may itself hold '@'
    netloc = f"{MASK}:{MASK}@{hostport}" if at and ":" in userinfo else f"{MASK}@{hostport}" if at else hostport
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_secret(name) for name, _ in pairs):
            query = urlencode([(name, MASK if _secret(name) else value) for name, value in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _secret(name: str) -> bool:
    return name.lower().replace("-", "_") in SECRET_PARAMETERS
