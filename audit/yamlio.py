"""Reading small YAML files (config and policy files) safely, with one set of messages.

Every file a user hands the auditor as options (``--config``, ``--policy``) is read here:
a missing file, one that is not UTF-8, not YAML, beyond a limit, or not a mapping is an
:class:`~audit.errors.InputError` whose one line names the file. JSON is YAML, so a JSON
options file reads the same way. Turning the mapping into a typed model is
:func:`audit.errors.validate`'s job (one message format for a bad key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from audit.errors import InputError, one_line

# ---------------------------------------------------------------------------------------
# YAML read with limits (config and policy files): a few KB of hand-written options. The
# limits refuse what no such file needs and what could exhaust memory or the stack: an
# alias bomb (a few lines whose aliases expand to billions of nodes downstream), a
# self-referencing anchor, nesting thousands deep, or a huge file.
# ---------------------------------------------------------------------------------------

YAML_MAX_BYTES = 256 * 1024
"""Largest config or policy file read."""
YAML_MAX_DEPTH = 32
"""Deepest nesting of mappings and sequences, aliases expanded."""
YAML_MAX_NODES = 20_000
"""Most nodes (scalars, sequences, mappings), every alias counted as what it expands to."""
YAML_MAX_ALIASES = 32
"""Most aliases (``*name``) in one document."""


class _YAMLLimit(Exception):
    """A document beyond one of the limits above."""


def _parser_bases() -> tuple[type, ...]:
    # libyaml's parser (fast, and iterative: it refuses nesting beyond its own bound) with
    # PyYAML's Python composer, so every node passes through the counting compose_node
    try:
        from yaml._yaml import CParser

        return (CParser,)
    except ImportError:  # PyYAML without libyaml
        from yaml.parser import Parser
        from yaml.reader import Reader
        from yaml.scanner import Scanner

        return (Reader, Scanner, Parser)


_PARSER = _parser_bases()


class _LimitedLoader(*_PARSER, yaml.composer.Composer, yaml.constructor.SafeConstructor,  # type: ignore[misc]
                     yaml.resolver.Resolver):
    """PyYAML's safe loader with a node, depth and alias budget checked while composing."""

    def __init__(self, stream: str) -> None:
        if len(_PARSER) == 1:
            _PARSER[0].__init__(self, stream)  # type: ignore[misc]
        else:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self._depth = self._nodes = self._aliases = 0

    # the Python composer's methods, not CParser's own (which compose in C, uncounted)
    get_single_node = yaml.composer.Composer.get_single_node
    compose_document = yaml.composer.Composer.compose_document
    compose_scalar_node = yaml.composer.Composer.compose_scalar_node
    compose_sequence_node = yaml.composer.Composer.compose_sequence_node
    compose_mapping_node = yaml.composer.Composer.compose_mapping_node

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > YAML_MAX_ALIASES:
                raise _YAMLLimit(f"it uses more than {YAML_MAX_ALIASES} aliases (*name)")
        self._depth += 1
        if self._depth > YAML_MAX_DEPTH:
            raise _YAMLLimit(f"it is nested too deeply (more than {YAML_MAX_DEPTH} levels)")
        try:
            node = yaml.composer.Composer.compose_node(self, parent, index)
        finally:
            self._depth -= 1
        self._nodes += 1
        if self._nodes > YAML_MAX_NODES:
            raise _YAMLLimit(f"it has more than {YAML_MAX_NODES} values")
        return node


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a node graph whose aliases expand beyond the node or depth budget, or loop."""
    done: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, expanded depth)
    entered: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]

    def children(n: yaml.Node) -> list[yaml.Node]:
        if isinstance(n, yaml.SequenceNode):
            return list(n.value)
        if isinstance(n, yaml.MappingNode):
            return [x for kv in n.value for x in kv]
        return []

    while stack:
        node, leaving = stack.pop()
        key = id(node)
        if leaving:
            kids = [done[id(c)] for c in children(node)]
            size = 1 + sum(k[0] for k in kids)
            depth = 1 + max((k[1] for k in kids), default=0)
            if size > YAML_MAX_NODES:
                raise _YAMLLimit(f"its aliases expand to more than {YAML_MAX_NODES} values")
            if depth > YAML_MAX_DEPTH:
                raise _YAMLLimit(f"its aliases expand to more than {YAML_MAX_DEPTH} levels of nesting")
            done[key] = (size, depth)
            continue
        if key in done:
            continue
        if key in entered:  # entered and not left: an ancestor of itself
            raise _YAMLLimit("an alias refers to a node that contains it (a loop)")
        entered.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children(node))


def _yaml_problem(e: yaml.YAMLError) -> str:
    if isinstance(e, yaml.MarkedYAMLError):
        what = ", ".join(x for x in (e.context, e.problem) if x) or type(e).__name__
        mark = e.problem_mark or e.context_mark
        return f"{what} (line {mark.line + 1}, column {mark.column + 1})" if mark else what
    return one_line(str(e)) or type(e).__name__


def read_yaml(path: str | Path, what: str) -> Any:
    """Read a small YAML file safely: size, nesting, value and alias limits; strict UTF-8.

    Args:
        path: the file.
        what: what it is, for messages (``config file``, ``policy file``).

    Raises:
        InputError: missing, unreadable, too big, not UTF-8, not YAML, or beyond a limit;
            one line naming the file and the reason.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} not found: {p}")
    try:
        with p.open("rb") as fh:
            raw = fh.read(YAML_MAX_BYTES + 1)
    except OSError as e:
        raise InputError(f"cannot read {what} {p}: {e.strerror or e}") from None
    if len(raw) > YAML_MAX_BYTES:
        raise InputError(f"{what} {p} is larger than {YAML_MAX_BYTES // 1024} KiB; is it the right file?")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{what} {p} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    loader = _LimitedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    except _YAMLLimit as e:
        raise InputError(f"{what} {p} is refused: {e}") from None
    except yaml.YAMLError as e:
        raise InputError(f"{what} {p} is not valid YAML: {_yaml_problem(e)}") from None
    except RecursionError:
        raise InputError(f"{what} {p} is nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as e:  # a scalar the safe constructor chokes on
        raise InputError(f"{what} {p} is not valid YAML: {one_line(str(e)) or type(e).__name__}") from None
    finally:
        loader.dispose()


def read_mapping(path: str | Path, what: str, holds: str = "options") -> dict[str, Any]:
    """:func:`read_yaml`, then require a mapping (an empty file is an empty mapping).

    Args:
        path: the file.
        what: what it is, for messages (``config file``, ``policy file``).
        holds: what its keys are, for the message when it is not a mapping.

    Raises:
        InputError: as :func:`read_yaml`, or ``{what} {path} must hold a mapping of {holds}``.
    """
    data = read_yaml(path, what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(f"{what} {Path(path)} must hold a mapping of {holds}")
    return data
