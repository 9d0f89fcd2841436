"""Keep the configured secrets out of everything a run stores.

The config holds only the *names* of the variables with secrets (``llm.provider.api_key_env``,
``run.postgres_dsn_env``), but their values can still reach a run directory by another way:
a server that answers 401 with the key it was sent echoes it into the exception message,
the chained exception lands in a failure record's traceback, and LangGraph serializes a
failed node's exception into the checkpoint database. :class:`Scrubber` replaces every
such value in texts, nested data and serialized bytes; :func:`checkpoint_serializer` gives
the savers a serializer that applies it to each checkpoint write.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from mcu_sim.redaction import MASK

MIN_SECRET_CHARS = 8  # shorter values ("x", "not-needed") would mangle ordinary text
_DSN_PASSWORD = re.compile(r"password\s*=\s*'?([^'\s]+)")


def _dsn_parts(dsn: str) -> list[str]:
    """The connection string and its password (URL or ``key=value`` form)."""
    parts = [dsn]
    try:
        password = urlsplit(dsn).password
    except ValueError:
        password = None
    match = _DSN_PASSWORD.search(dsn)
    parts += [p for p in (password, match.group(1) if match else None) if p]
    return parts


def secret_values(config: Any, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The values of the secrets ``config`` names, longest first (so a DSN is masked as a
    whole before its password)."""
    env = os.environ if environ is None else environ
    values: set[str] = set()
    variable = config.llm.provider.api_key_variable()
    if variable and env.get(variable):
        values.add(env[variable])
    dsn_variable = getattr(config.run, "postgres_dsn_env", None)
    if dsn_variable and env.get(dsn_variable):
        values.update(_dsn_parts(env[dsn_variable]))
    kept = [v for v in values if len(v) >= MIN_SECRET_CHARS]
    return tuple(sorted(kept, key=len, reverse=True))


class Scrubber:
    """Replaces each secret value with ``***`` (in bytes: with as many ``*``, so lengths in a
    serialized format stay valid)."""

    def __init__(self, secrets: tuple[str, ...] | list[str] = ()) -> None:
        self.secrets = tuple(secrets)
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


@functools.cache
def _masking_serializer_class() -> type:
    """LangGraph's public ``JsonPlusSerializer`` with masked writes (made on first use: no
    langgraph import when this module is imported); reading is unchanged."""
    from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

    class MaskingSerializer(JsonPlusSerializer):
        def __init__(self, scrubber: Scrubber, **options: Any) -> None:
            super().__init__(**options)
            self.scrubber = scrubber

        def dumps_typed(self, obj: Any) -> tuple[str, bytes]:
            kind, data = super().dumps_typed(obj)
            return kind, self.scrubber.raw(data)

    return MaskingSerializer


def checkpoint_serializer(scrubber: Scrubber | None) -> Any:
    """The ``serde=`` for a LangGraph saver: one that masks ``scrubber``'s secrets in every
    checkpoint and pending write (a failed node's exception included), or None (the
    saver's default) when there is nothing to mask."""
    if not scrubber:
        return None
    return _masking_serializer_class()(scrubber)
