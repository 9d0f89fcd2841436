"""Masking secrets before anything is shown, logged, written to a run or fingerprinted.

Two kinds of secret can sit in a config: a value under a secret-looking key (``api_key``,
``password``, ...), and credentials inside a URL (``https://user:pass@host`` or a query
parameter such as ``?api-key=...``). :func:`redacted` masks both in nested data;
:func:`mask_url` masks one URL.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
SECRET_MARKERS = ("key", "secret", "token", "password", "credential")
NOT_SECRET = {"max_tokens"}
# Query parameters that carry credentials without a marker word in their name.
SECRET_QUERY_NAMES = {"sig", "signature", "auth", "authorization", "pass", "pwd", "code"}
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_secret_key(key: str) -> bool:
    """``api_key`` and friends are secret; ``api_key_env`` holds a variable *name*."""
    lowered = key.lower()
    if lowered in NOT_SECRET or lowered.endswith("_env"):
        return False
    return any(marker in lowered for marker in SECRET_MARKERS)


def _secret_query_name(name: str) -> bool:
    return is_secret_key(name) or name.lower() in SECRET_QUERY_NAMES


def is_secret_query_name(name: str) -> bool:
    """Whether a URL query parameter called ``name`` carries a credential (``api-key``,
    ``sig``, ...): the values :func:`mask_url` masks."""
    return _secret_query_name(name)


def mask_url(url: str) -> str:
    """``url`` with its userinfo and secret-looking query values replaced by ``***``.

    ``https://user:pass@host/v1?api-key=abc&x=1`` becomes ``https://***@host/v1?api-key=***&x=1``.
    Text that is not a URL comes back unchanged.
    """
    if not _URL.match(url):
        return url
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an invalid IPv6 literal: mask everything after the scheme
        return url.split("://", 1)[0] + "://" + MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(_secret_query_name(name) for name, _ in pairs):
            masked = [(n, MASK if _secret_query_name(n) and v else v) for n, v in pairs]
            query = urlencode(masked, safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def has_masked_credentials(url: str | None) -> bool:
    """Whether ``url`` is one :func:`mask_url` has already masked (unusable for requests)."""
    return bool(url) and mask_url(url) == url and MASK in url


def redacted(data: Any) -> Any:
    """Copy of ``data`` with values under secret-looking keys masked as ``***`` and the
    credentials in URL values masked by :func:`mask_url`."""
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            secret = is_secret_key(str(key)) and value not in (None, "")
            out[key] = MASK if secret else redacted(value)
        return out
    if isinstance(data, list):
        return [redacted(v) for v in data]
    if isinstance(data, str):
        return mask_url(data)
    return data
