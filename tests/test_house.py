"""
The house rules that keep chatd's layout, checked on its source:

- no import cycle between chatd's modules (imports inside functions count);
- the pure layer imports neither Twisted nor Autobahn, directly or through
  another chatd module (imports under ``TYPE_CHECKING`` do not run);
- the chat and the conversation never reach Autobahn;
- a private attribute of another library is used in ``chatd/fastpath.py``
  only.

docs/development.md explains the layers.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "chatd"

#: Modules without I/O: rules, state and bytes, tested without a reactor.
PURE = {
    "chatd.errors", "chatd.settings", "chatd.codec", "chatd.delivery.frames", "chatd.ratelimit",
    "chatd.core", "chatd.config", "chatd.backplane.address", "chatd.admission", "chatd.names",
    "chatd.rooms", "chatd.rooms.state", "chatd.rooms.history", "chatd.rooms.rules", "chatd.backplane.lines",
    "chatd.backplane.facts", "chatd.rooms.events", "chatd.rooms.metering", "chatd.delivery.handout",
    "chatd.delivery.local", "chatd.replies", "chatd.rooms.store", "chatd.rooms.lasting", "chatd.storage.schema", "chatd.delivery.direct",
}

#: One client's conversation and the chat it talks to: Twisted, never Autobahn.
CONVERSATION = {"chatd.chat", "chatd.conversation", "chatd.delivery.outbox", "chatd.backplane.cluster"}

#: The one module allowed to touch other libraries' internals.
FASTPATH = "chatd.fastpath"

#: Public-looking names that are internals of Twisted or Autobahn all the same.
KNOWN_INTERNALS = {
    "dataBuffer", "offset", "current_frame", "inside_message", "wasClean", "CONFIG_ATTRS",
    "replyQueue", "discovery_timeout",
}

FRAMEWORKS = ("twisted", "autobahn", "txaio", "txredisapi")


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node but those under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def imports(name: str, path: Path) -> set[str]:
    """The modules ``name`` imports when it runs (anywhere in it)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def chatd_graph() -> dict[str, set[str]]:
    """chatd's modules and the chatd modules each imports (a package's
    ``__init__`` runs too)."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = set()
        for imported in imports(name, path):
            while imported and imported not in known:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
                parent = imported.rpartition(".")[0]
                if parent in known and parent != name:
                    targets.add(parent)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_no_import_cycle_inside_chatd() -> None:
    assert find_cycle(chatd_graph()) == []


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def reached_from(name: str, graph: dict[str, set[str]]) -> set[str]:
    """Every module that importing ``name`` runs, itself included."""
    reached, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current not in reached:
            reached.add(current)
            todo.extend(graph[current])
    return reached


def test_the_pure_layer_runs_without_twisted_or_autobahn() -> None:
    graph = chatd_graph()
    known = modules()
    assert PURE <= set(known), PURE - set(known)
    for name in sorted(PURE):
        for module in sorted(reached_from(name, graph)):
            frameworks = sorted(
                i for i in imports(module, known[module]) if i.split(".")[0] in FRAMEWORKS)
            assert not frameworks, f"{name} runs {module}, which imports {frameworks}"


def test_the_chat_and_the_conversation_run_without_autobahn() -> None:
    graph = chatd_graph()
    known = modules()
    assert CONVERSATION <= set(known), CONVERSATION - set(known)
    for name in sorted(CONVERSATION):
        for module in sorted(reached_from(name, graph)):
            found = sorted(i for i in imports(module, known[module]) if i.split(".")[0] == "autobahn")
            assert not found, f"{name} runs {module}, which imports {found}"


def own_names() -> set[str]:
    """Every name chatd defines outside the fast path module: functions,
    classes, attributes and names it assigns, ``__slots__`` entries,
    parameters."""
    names: set[str] = set()
    for name, path in modules().items():
        if name == FASTPATH:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            if (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets)
                and isinstance(node.value, (ast.Tuple, ast.List))
            ):
                names.update(
                    e.value for e in node.value.elts
                    if isinstance(e, ast.Constant) and isinstance(e.value, str))
    return names


def foreign_internals(source: str, own: set[str]) -> list[str]:
    """Private attributes (and known internals) of other libraries that
    ``source`` uses: by attribute access, or by name through getattr()."""
    found = []
    for node in ast.walk(ast.parse(source)):
        name = None
        if isinstance(node, ast.Attribute):
            name = node.attr
        elif (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
        ):
            name = node.args[1].value
        if name is None:
            continue
        private = name.startswith("_") and not name.startswith("__")
        if (private and name not in own) or name in KNOWN_INTERNALS:
            found.append(f"line {node.lineno}: {name}")
    return found


def test_private_attributes_of_other_libraries_live_in_one_module() -> None:
    own = own_names()
    offenders = {}
    for name, path in modules().items():
        if name == FASTPATH:
            continue
        found = foreign_internals(path.read_text(), own)
        if found:
            offenders[name] = found
    assert offenders == {}


@pytest.mark.parametrize("source", [
    "transport._tempDataBuffer",
    "len(transport.dataBuffer) == transport.offset",
    "getattr(reactor, '_exitSignal', None)",
    "self._dataReceived(data)",
])
def test_the_internals_check_catches_each_kind(source: str) -> None:
    assert foreign_internals(source, own_names())


def test_no_room_rule_is_written_in_lua() -> None:
    # The rules live in chatd/rooms/rules.py alone: a script that spoke of
    # bans, invitations, roles, privacy, nicks or owners would be deciding.
    from chatd.backplane import scripts

    words = re.compile(r"ban|invit|role|private|nick|owner|moderat", re.IGNORECASE)
    for script in scripts.ALL:
        lua = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("--"))
        assert not words.search(lua), words.search(lua)
