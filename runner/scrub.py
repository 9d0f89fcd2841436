"""Keep the configured secrets out of everything a run stores.

The config holds only the *names* of the variables with secrets and the URLs of the
endpoints, but the values can still reach a run directory by another way: a server that
answers 401 with the key it was sent (or its URL, password and ``?api-key=`` included)
echoes it into the exception message, the chained exception lands in a failure record's
traceback, and LangGraph serializes a failed node's exception into the checkpoint
database. :class:`Scrubber` (:mod:`mcu_sim.config_secrets`: which values, in which
forms) replaces every such value in texts, nested data and serialized bytes;
:func:`checkpoint_serializer` gives the savers a serializer that applies it to each
checkpoint write, and :func:`scrubbed_logging` masks what is logged during a run.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Iterator
from typing import Any

from mcu_sim.config_secrets import (  # noqa: F401 - re-exported
    MIN_SECRET_CHARS,
    Scrubber,
    secret_values,
)


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


class ScrubbingFilter(logging.Filter):
    """Masks the secrets in a log record's message and traceback (in place, so that every
    handler after this one sees the masked record too)."""

    def __init__(self, scrubber: Scrubber) -> None:
        super().__init__()
        self.scrubber = scrubber

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.scrubber.text(record.getMessage())
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self.scrubber.text(
                logging.Formatter().formatException(record.exc_info)
            )
            record.exc_info = None
        if record.stack_info:
            record.stack_info = self.scrubber.text(record.stack_info)
        return True


@contextlib.contextmanager
def scrubbed_logging(scrubber: Scrubber) -> Iterator[None]:
    """While a run lasts, mask ``scrubber``'s secrets in every record the root logger's
    handlers emit. With no handler configured, Python would print warnings through its
    last-resort handler (which no filter reaches): a stderr handler like it stands in."""
    if not scrubber:
        yield
        return
    root = logging.getLogger()
    stand_in = None
    if not root.handlers:
        stand_in = logging.StreamHandler(sys.stderr)
        stand_in.setLevel(logging.WARNING)
        root.addHandler(stand_in)
    masking = ScrubbingFilter(scrubber)
    handlers = list(root.handlers)
    for handler in handlers:
        handler.addFilter(masking)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(masking)
        if stand_in is not None:
            root.removeHandler(stand_in)
