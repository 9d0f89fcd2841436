"""Run graph nodes and conditional edges in place when no callback handler listens.

LangGraph runs every node through a sequence (``RunnableSeq``) that opens a LangChain
callback run, copies the context into a new task for the node and closes the run in a
shielded task of its own, whether or not any handler is configured; a plain function given
to ``add_conditional_edges`` is traced the same way and, being synchronous, is sent to a
thread pool. Per LLM call of a bench episode that was about 2.5 asyncio tasks and one
thread hand-off out of 5.8 tasks, none of them needed when nothing listens.

:func:`lean_graph` gives each plain-function node of a compiled graph a
:class:`DirectNodeSeq`: the node, then its writers, awaited in the caller's task with the
config in ``var_child_runnable_config`` (so ``get_config()`` and ``interrupt()`` still see
it). When the config carries a handler (LangSmith tracing, a user's callbacks), the
original sequence runs instead, so traces are unchanged. :func:`inline_route` makes a
route function a runnable LangGraph calls on the loop, untraced.

A conditional edge reads the state as its node's writes would leave it. LangGraph builds
that view by copying every channel of the graph (33 for the episode graph: the state's
keys and one trigger per node) and applying the node's writes to each copy, then keeps
only the keys the route reads. :func:`lean_graph` gives each edge a reader that copies
only the keys the route reads and the task wrote (:func:`fresh_selected_read`): the same
values from a few copies instead of 33.

Both lean on how LangGraph 1.x builds a node (``PregelNode.node``, a cached property;
``RunnableSeq.steps``; ``RunnableCallable``). Where a version builds it otherwise, the
graph is left as it is: slower, never different.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import var_child_runnable_config

log = logging.getLogger(__name__)

try:  # LangGraph's own runnable types: absent from a version that reorganised them
    from langgraph._internal._runnable import RunnableCallable, RunnableSeq
except ImportError:  # pragma: no cover - depends on the installed LangGraph
    RunnableCallable = RunnableSeq = None  # type: ignore[assignment,misc]

try:  # how a task reads the state; a version that reorganised it keeps its own readers
    from langgraph._internal._constants import CONF, CONFIG_KEY_READ
    from langgraph.channels.binop import BinaryOperatorAggregate
    from langgraph.channels.last_value import LastValue
    from langgraph.pregel._algo import local_read
    from langgraph.pregel._io import read_channels
    from langgraph.pregel._read import ChannelRead

    # channels whose update with no value changes nothing: read as they are when the task
    # wrote none (an EphemeralValue, say, is cleared by it, so it is still copied)
    _SAME_WITHOUT_WRITES: tuple[type, ...] = (LastValue, BinaryOperatorAggregate)
except ImportError:  # pragma: no cover - depends on the installed LangGraph
    local_read = None  # type: ignore[assignment]


def _listened(config: RunnableConfig) -> bool:
    """Whether a callback handler (a tracer, a user's handler) would see this run."""
    callbacks = config.get("callbacks")
    if not callbacks:
        return False
    handlers = getattr(callbacks, "handlers", callbacks)  # a manager, or a list of handlers
    return bool(handlers)


class DirectNodeSeq(Runnable):
    """A node and its writers, awaited in place; the original sequence when listened to."""

    def __init__(self, original: Any) -> None:
        self.original = original
        self.node, *self.writers = original.steps
        self.name = original.name

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self.original.invoke(input, config, **kwargs)

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        if config is None or _listened(config):
            return await self.original.ainvoke(input, config, **kwargs)
        token = var_child_runnable_config.set(config)
        try:
            value = await self.node.ainvoke(input, config, **kwargs)
        finally:
            var_child_runnable_config.reset(token)
        for writer in self.writers:
            value = await writer.ainvoke(value, config)
        return value

    def stream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> Iterator[Any]:
        return self.original.stream(input, config, **kwargs)

    def astream(
        self, input: Any, config: RunnableConfig | None = None, **kwargs: Any
    ) -> AsyncIterator[Any]:
        return self.original.astream(input, config, **kwargs)


def _plain_node(pregel_node: Any) -> Any:
    """The node's sequence when it is a plain function followed by writers, else None."""
    if RunnableSeq is None:
        return None
    try:
        sequence = pregel_node.node
    except AttributeError:
        return None
    if not isinstance(sequence, RunnableSeq) or len(getattr(sequence, "steps", ())) < 2:
        return None
    if not isinstance(sequence.steps[0], RunnableCallable):  # e.g. a compiled subgraph
        return None
    return sequence


def lean_graph(compiled: Any) -> Any:
    """Give each plain-function node of ``compiled`` a :class:`DirectNodeSeq` and each
    conditional edge :func:`fresh_selected_read` (in place)."""
    replaced = 0
    for pregel_node in getattr(compiled, "nodes", {}).values():
        for writer in getattr(pregel_node, "writers", ()):
            _select_fresh_reads(writer)
        sequence = _plain_node(pregel_node)
        if sequence is None:
            continue
        pregel_node.__dict__["node"] = DirectNodeSeq(sequence)  # shadows the cached property
        replaced += 1
    if not replaced:
        log.debug("no node of %s could be run in place", type(compiled).__name__)
    return compiled


def _select_fresh_reads(writer: Any) -> bool:
    """Swap a conditional edge's reader (LangGraph's ``ChannelRead.do_read`` of a list of
    keys with ``fresh=True``) for :func:`fresh_selected_read`; anything else is left."""
    if local_read is None or not isinstance(writer, RunnableCallable):
        return False
    kwargs = getattr(writer, "kwargs", None)
    reader = kwargs.get("reader") if isinstance(kwargs, dict) else None
    if not (
        isinstance(reader, functools.partial)
        and reader.func is ChannelRead.do_read
        and not reader.args
        and set(reader.keywords) == {"select", "fresh", "mapper"}
        and reader.keywords["fresh"] is True
        and isinstance(reader.keywords["select"], list)
    ):
        return False
    kwargs["reader"] = functools.partial(
        fresh_selected_read,
        select=reader.keywords["select"],
        mapper=reader.keywords["mapper"],
    )
    return True


def fresh_selected_read(
    config: RunnableConfig, *, select: list[str], mapper: Callable[[Any], Any] | None = None
) -> Any:
    """``ChannelRead.do_read(config, select=select, fresh=True, mapper=mapper)``, copying
    only the channels in ``select`` that the task wrote to (:func:`_fresh_values`).

    LangGraph's ``local_read`` copies every channel and applies the task's writes to each
    copy, then reads the selected ones; a channel's read depends only on its own copy, so
    the others change nothing in what is returned. A reader that is not LangGraph's
    ``local_read`` bound to a task (a version that passes something else) is called as
    LangGraph would."""
    read = config[CONF][CONFIG_KEY_READ]
    if isinstance(read, functools.partial) and read.func is local_read and len(read.args) == 4:
        scratchpad, channels, managed, task = read.args
        values = _fresh_values(scratchpad, channels, managed, task, select)
    else:
        values = read(select, True)
    return mapper(values) if mapper else values


def _fresh_values(
    scratchpad: Any, channels: Any, managed: Any, task: Any, select: list[str]
) -> dict[str, Any]:
    """What ``local_read(..., select, fresh=True)`` returns, from copies of the channels in
    ``select`` the task wrote to; the others are read as they are (a copy with no update
    holds the same value)."""
    managed_keys = [k for k in select if k in managed]
    keys = [k for k in select if k not in managed]
    wanted = set(keys)
    updated: defaultdict[str, list[Any]] = defaultdict(list)
    for channel, value in task.writes:
        if channel in wanted:
            updated[channel].append(value)
    local = {}
    for key in keys:
        channel = channels[key]
        if key not in updated and type(channel) in _SAME_WITHOUT_WRITES:
            local[key] = channel  # only read: read_channels never changes a channel
            continue
        copy = channel.copy()
        copy.update(updated[key])
        local[key] = copy
    values = read_channels(local, keys)
    if managed_keys:
        values.update({k: managed[k].get(scratchpad) for k in managed_keys})
    return values


def inline_route(func: Callable[..., Any]) -> Any:
    """``func`` as a conditional edge LangGraph calls on the loop, untraced.

    LangGraph's own runnable type, so a ``runtime`` parameter is filled in as for any
    route; a version without it gets ``func`` back, traced as before.
    """
    if RunnableCallable is None:  # pragma: no cover - depends on the installed LangGraph
        return func
    return RunnableCallable(func, None, name=func.__name__, trace=False)
