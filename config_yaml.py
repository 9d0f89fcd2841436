"""Reading YAML from people and environments without trusting it.

:func:`load_yaml` parses a config file, an ``MCU__`` variable or a ``--set`` value:

- errors name the position and PyYAML's description of the problem, never the offending
  line (PyYAML's own message quotes it, and a malformed line may hold a key);
- bytes that are not UTF-8 (or UTF-16 with a BOM, which YAML allows) are a config error;
- the document is composed first and measured before any Python object is built: nesting
  deeper than :data:`MAX_DEPTH` or aliases expanding to more than :data:`MAX_NODES` nodes
  (the "billion laughs") are refused, measured over the node graph with each shared node
  counted once per use but walked once.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from mcu_sim.config_errors import ConfigError

MAX_DEPTH = 64  # a config is a handful of levels deep
MAX_NODES = 100_000  # after alias expansion; a full config is a few hundred
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def describe_yaml_error(exc: yaml.YAMLError) -> str:
    """What went wrong and where, without quoting the document's text."""
    problem = getattr(exc, "problem", None) or getattr(exc, "reason", None)
    if not problem:
        problem = type(exc).__name__
    # Quoted pieces of the document (a token, an alias name) are kept only when tiny.
    problem = _QUOTED.sub(lambda m: m.group(0) if len(m.group(0)) <= 6 else "'…'", problem)
    mark = getattr(exc, "problem_mark", None)
    if mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    position = getattr(exc, "position", None)
    if isinstance(exc, yaml.reader.ReaderError):  # bytes that are not text
        return f"not UTF-8 (or UTF-16) text: {problem} at byte {position}"
    return f"{problem} at character {position}" if isinstance(position, int) else problem


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _measure(root: yaml.Node) -> None:
    """Refuse a node graph nested deeper than MAX_DEPTH or expanding past MAX_NODES.

    Iterative (no recursion limit to hit) and memoised per node (expanded size and height),
    so an alias bomb costs one visit per distinct node however large its expansion; an
    alias inside its own anchor (a cycle) is refused as too deep.
    """
    measured: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, height)
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, children_done = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError(f"nested more than {MAX_DEPTH} levels deep")
        if id(node) in measured:
            continue
        children = _children(node)
        if not children_done:
            stack.append((node, depth, True))
            stack.extend((child, depth + 1, False) for child in children)
            continue
        parts = [measured[id(child)] for child in children]
        size = 1 + sum(part[0] for part in parts)
        height = 1 + max((part[1] for part in parts), default=0)
        if size > MAX_NODES:
            raise ConfigError(
                f"expands to more than {MAX_NODES} values (aliases repeating aliases?)"
            )
        if height > MAX_DEPTH:
            raise ConfigError(f"nested more than {MAX_DEPTH} levels deep")
        measured[id(node)] = (size, height)


def _parse(source: str | bytes) -> Any:
    loader = yaml.SafeLoader(source)  # reads (and decodes) the start of the stream already
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _measure(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_yaml(source: str | bytes, where: str) -> Any:
    """Parse one YAML document; :class:`ConfigError` naming ``where`` on any problem."""
    try:
        return _parse(source)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}.") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {describe_yaml_error(exc)}.") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to read.") from None
    except UnicodeError:
        raise ConfigError(f"{where} is not UTF-8 text.") from None
