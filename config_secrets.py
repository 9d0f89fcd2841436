"""Every secret value a config names, and a scrubber that masks them wherever they appear.

The config holds variable *names* and URLs, never a key, but the values behind them can
still reach what a run stores: a server echoes the key it was sent, or its own URL with the
password or ``?api-key=`` in it, into an error body or even a reply; the error lands in a
failure record, a checkpoint, a log line, the LLM cache. :func:`secret_values` collects,
for a config and an environment:

- the value of every variable the config names (each ``*_env`` field: the API key, the
  Postgres DSN, ...) and of the provider's default key variable (``OPENAI_API_KEY``, ...);
- every non-empty value under a secret-looking key (:func:`mcu_sim.redaction.is_secret_key`);
- inside every URL in the config or in those values: the userinfo password (the user name
  when it stands alone: a token), and the values of secret-looking query parameters
  (:func:`mcu_sim.redaction.is_secret_query_name`); the password of a ``key=value`` DSN;
- each in the forms a server may echo it: as written, percent-decoded, percent-encoded,
  form-encoded, JSON-escaped.

A value shorter than :data:`MIN_SECRET_CHARS` would mangle ordinary text if it were masked
wherever it occurs: it is masked in its context only (``user:pw@``, ``api-key=pw``).
:class:`Scrubber` masks the collected values in texts, nested data and serialized bytes.
It sits at the bottom layer so that the provider adapters and the runner share it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, unquote, unquote_plus, urlsplit

from mcu_sim.redaction import MASK, is_secret_key, is_secret_query_name

MIN_SECRET_CHARS = 6  # shorter values ("x", "abc") would mangle ordinary text
_DSN_PASSWORD = re.compile(r"password\s*=\s*'?([^'\s]+)")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def encodings(value: str) -> set[str]:
    """``value`` as written, and each decoded form of it re-encoded the ways a server or
    a serializer writes it back (percent, form, JSON escapes)."""
    forms = {value}
    for decoded in {value, unquote(value), unquote_plus(value)}:
        forms |= {
            decoded,
            quote(decoded, safe=""),
            quote(decoded),
            quote_plus(decoded, safe=""),
            json.dumps(decoded)[1:-1],
            json.dumps(decoded, ensure_ascii=False)[1:-1],
        }
    return {form for form in forms if form}


def _secret_in(secret: str, context: str) -> set[str]:
    """``secret``'s forms, or those of ``context`` (the text around it) when it is short."""
    if len(unquote(secret)) >= MIN_SECRET_CHARS:
        return encodings(secret)
    return encodings(context)


def url_secrets(url: str) -> set[str]:
    """The credentials inside ``url``: its userinfo password (or a lone user name, a token)
    and its secret-looking query values. Empty for a URL without any."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        netloc, query = parts.netloc, parts.query
    except ValueError:  # e.g. a broken IPv6 literal: the part after the scheme is suspect
        rest = url.split("://", 1)[-1]
        return encodings(rest) if ("@" in rest or "?" in rest) else set()
    found: set[str] = set()
    userinfo = netloc.rpartition("@")[0]
    if userinfo:
        user, colon, password = userinfo.partition(":")
        secret = password if colon and password else user
        if secret:
            found |= _secret_in(secret, userinfo + "@")
    for pair in re.split("[&;]", query):
        name, equals, value = pair.partition("=")
        if equals and value and is_secret_query_name(unquote_plus(name)):
            found |= _secret_in(value, pair)
    return found


def text_secrets(value: str, whole: bool) -> set[str]:
    """The secrets in a configured value: the whole value if it is one (``whole``), the
    credentials of every URL in it, the password of a ``key=value`` DSN."""
    value = value.strip()
    found: set[str] = set()
    if whole and len(value) >= MIN_SECRET_CHARS:
        # a whole URL or DSN as written; its parts, in every form, come below
        locator = "://" in value or _DSN_PASSWORD.search(value)
        found |= {value} if locator else encodings(value)
    for url in _URL_IN_TEXT.findall(value):
        found |= url_secrets(url)
    match = _DSN_PASSWORD.search(value)
    if match:
        found |= _secret_in(match.group(1), match.group(0))
    return found


def _walk(value: Any, key: str, names: set[str], found: set[str]) -> None:
    """Collect from a config dump: variable names under ``*_env`` keys into ``names``,
    secrets (values under secret keys, URL credentials) into ``found``."""
    if isinstance(value, Mapping):
        for sub_key, sub_value in value.items():
            _walk(sub_value, str(sub_key), names, found)
    elif isinstance(value, list | tuple):
        for item in value:
            _walk(item, key, names, found)
    elif isinstance(value, str) and value.strip():
        if key.endswith("_env"):
            names.add(value.strip())
        else:
            found |= text_secrets(value, whole=is_secret_key(key))


def ordered(values: Iterable[str]) -> tuple[str, ...]:
    """Longest first, so a DSN or a whole URL is masked before a part of it."""
    return tuple(sorted(set(values), key=lambda v: (-len(v), v)))


def secret_values(config: Any, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Every secret ``config`` names (see the module docstring), longest first."""
    env = os.environ if environ is None else environ
    names: set[str] = set()
    found: set[str] = set()
    variable = config.llm.provider.api_key_variable()
    if variable:
        names.add(variable)
    _walk(config.model_dump(mode="json"), "", names, found)
    for name in names:
        if env.get(name):
            found |= text_secrets(env[name], whole=True)
    return ordered(found)


def provider_secret_values(provider: Any, api_key: str | None) -> tuple[str, ...]:
    """The secrets one LLM provider sends: its API key and the credentials in its URLs
    (what an adapter masks in the errors it raises and in what it caches)."""
    found = text_secrets(api_key, whole=True) if api_key else set()
    for url in (getattr(provider, "base_url", None), getattr(provider, "azure_endpoint", None)):
        if url:
            found |= text_secrets(url, whole=False)
    return ordered(found)


class Scrubber:
    """Replaces each secret value with ``***`` (in bytes: with as many ``*``, so lengths in a
    serialized format stay valid)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = ordered(s for s in secrets if s)
        self._encoded = tuple(s.encode("utf-8") for s in self.secrets)

    @classmethod
    def for_config(cls, config: Any, environ: Mapping[str, str] | None = None) -> Scrubber:
        return cls(secret_values(config, environ))

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def text(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def data(self, value: Any) -> Any:
        """A copy of nested dicts/lists/strings with every secret masked."""
        if not self.secrets:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.data(k): self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.data(v) for v in value)
        return value

    def raw(self, data: bytes) -> bytes:
        for secret in self._encoded:
            if secret in data:
                data = data.replace(secret, b"*" * len(secret))
        return data
