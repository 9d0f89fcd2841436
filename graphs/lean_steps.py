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

Both lean on how LangGraph 1.x builds a node (``PregelNode.node``, a cached property;
``RunnableSeq.steps``; ``RunnableCallable``). Where a version builds it otherwise, the
graph is left as it is: slower, never different.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.runnables.config import var_child_runnable_config

log = logging.getLogger(__name__)

try:  # LangGraph's own runnable types: absent from a version that reorganised them
    from langgraph._internal._runnable import RunnableCallable, RunnableSeq
except ImportError:  # pragma: no cover - depends on the installed LangGraph
    RunnableCallable = RunnableSeq = None  # type: ignore[assignment,misc]


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
    """Give each plain-function node of ``compiled`` a :class:`DirectNodeSeq` (in place)."""
    replaced = 0
    for pregel_node in getattr(compiled, "nodes", {}).values():
        sequence = _plain_node(pregel_node)
        if sequence is None:
            continue
        pregel_node.__dict__["node"] = DirectNodeSeq(sequence)  # shadows the cached property
        replaced += 1
    if not replaced:
        log.debug("no node of %s could be run in place", type(compiled).__name__)
    return compiled


def inline_route(func: Callable[..., Any]) -> Any:
    """``func`` as a conditional edge LangGraph calls on the loop, untraced.

    LangGraph's own runnable type, so a ``runtime`` parameter is filled in as for any
    route; a version without it gets ``func`` back, traced as before.
    """
    if RunnableCallable is None:  # pragma: no cover - depends on the installed LangGraph
        return func
    return RunnableCallable(func, None, name=func.__name__, trace=False)
