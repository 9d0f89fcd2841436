"""Masking secrets before anything is shown, logged, written to a run or fingerprinted.

Two kinds of secret can sit in a config: a value under a secret-looking key (``api_key``,
``password``, ...), and credentials inside a URL (``https://user:pass@host`` or a query
parameter such as ``?api-key=...``). :func:`redacted` masks both in nested data;
:func:`mask_url` masks one URL.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote_plus

MASK = "***"
SECRET_MARKERS = ("key", "secret", "token", "password", "credential")
NOT_SECRET = {"max_tokens"}
# Query parameters that carry credentials without a marker word in their name.
SECRET_QUERY_NAMES = {"sig", "signature", "auth", "authorization", "pass", "pwd", "code"}
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# What urllib strips around a URL before parsing it (C0 controls and space).
_SPACE = "".join(chr(c) for c in range(0x21))


def is_secret_key(key: str) -> bool:
    """``api_key`` and friends are secret; ``api_key_env`` holds a variable *name*."""
    lowered = key.lower()
    if lowered in NOT_SECRET or lowered.endswith("_env"):
        return False
    return any(marker in lowered for marker in SECRET_MARKERS)


def _secret_query_name(name: str) -> bool:
    return is_secret_key(name) or name.lower() in SECRET_QUERY_NAMES


def _mask_query(query: str) -> str:
    """Mask the values of secret-looking parameters; every other byte stays as written
    (re-encoding would turn a template's ``{query}`` into ``%7Bquery%7D``)."""
    pieces = []
    for piece in query.split("&"):
        name, sep, value = piece.partition("=")
        if sep and value and _secret_query_name(unquote_plus(name)):
            piece = f"{name}={MASK}"
        pieces.append(piece)
    return "&".join(pieces)


def is_secret_query_name(name: str) -> bool:
    """Whether a URL query parameter called ``name`` carries a credential (``api-key``,
    ``sig``, ...): the values :func:`mask_url` masks."""
    return _secret_query_name(name)


def mask_url(url: str) -> str:
    """``url`` with its userinfo and secret-looking query values replaced by ``***``.

    ``https://user:pass@host/v1?api-key=abc&x=1`` becomes ``https://***@host/v1?api-key=***&x=1``.
    Surrounding whitespace does not hide a URL, and the rest of the text is kept byte for byte
    (templates such as ``{query}`` survive). Text that is not a URL comes back unchanged.
    """
    core = url.strip(_SPACE)
    if not _URL.match(core):
        return url
    lead = url[: len(url) - len(url.lstrip(_SPACE))]
    trail = url[len(lead) + len(core) :]
    scheme, rest = core.split("://", 1)
    # The authority is read leniently, up to the first "/": a password holding "#", "?" or
    # "@" must not push its tail into a fragment or query where it would be shown.
    authority, slash, tail = rest.partition("/")
    if "@" in authority:
        authority = MASK + "@" + authority.rsplit("@", 1)[1]
    if slash:
        before_hash, hash_, fragment = tail.partition("#")
        path, qmark, query = before_hash.partition("?")
        head = authority + slash + path
    else:
        before_hash, hash_, fragment = authority.partition("#")
        head, qmark, query = before_hash.partition("?")
    # fragments too: OAuth puts access_token=... there
    query, fragment = _mask_query(query), _mask_query(fragment)
    return f"{lead}{scheme}://{head}{qmark}{query}{hash_}{fragment}{trail}"


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


def masked_url_keys(data: Any, prefix: str = "") -> list[str]:
    """Dotted keys of the values in ``data`` that are URLs already masked by :func:`mask_url`
    (a config copied from a run directory): such a value must never be used as if real."""
    found: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            found += masked_url_keys(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += masked_url_keys(value, f"{prefix}.{index}")
    elif isinstance(data, str) and has_masked_credentials(data):
        found.append(prefix)
    return found
