"""Orca's grading script: a control-flow graph of shell commands and file-system conditions.

Store-free and pure: the API checks a script at submission with `parse_script`, and the grader
parses the same JSON again into the graph it walks. Semantics (Orca's GradingScriptCommand):

- A bash command (`cmd`: an argv list, or a string run by `sh -c`) goes to `on_complete` when it
  exits 0 (default "next") and to `on_fail` otherwise (default "abort"). `working_dir` and a
  per-command `timeout` (seconds) are optional.
- A conditional (`condition: {"predicate": "exists"|"file"|"dir", "path"}`) goes to `on_true` or
  `on_false` (both default "next").
- An edge is "next", "output" (end, the job's output is the last command's stdout), "abort" (end
  without output), an index into the list the command is in, a `label` (unique in the whole
  script), or a nested list of commands.
- "next" from the last command of a nested list continues after the command that owns the list;
  from the last command of the script it ends the script as "output" (it ran to its end).

Nested lists are flattened into one list of steps whose edges are global indices, "output" or
"abort". A script that could loop, or whose edge names nothing, is rejected, naming the command
(`script[2].on_fail[0]: on_complete label 'x' names no command`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final, Literal

OUTPUT: Final = "output"
ABORT: Final = "abort"
NEXT: Final = "next"
RESERVED = (NEXT, OUTPUT, ABORT)
PREDICATES = ("exists", "file", "dir")
# Each command is a container exec and a shell response in the result: bound them.
MAX_COMMANDS = 500
MAX_DEPTH = 20

End = Literal["output", "abort"]
Target = int | End


class ScriptError(ValueError):
    """The script is not a valid, acyclic grading script; `errors` names each problem."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class BashStep:
    where: str
    cmd: tuple[str, ...] | str
    on_complete: Target
    on_fail: Target
    working_dir: str | None = None
    timeout_s: float | None = None
    label: str | None = None


@dataclass(frozen=True)
class ConditionStep:
    where: str
    predicate: str
    path: str
    on_true: Target
    on_false: Target
    label: str | None = None


Step = BashStep | ConditionStep


@dataclass(frozen=True)
class Script:
    """The flattened graph: steps[0] runs first; every edge is a step index, "output" or "abort"."""

    steps: tuple[Step, ...]


def parse_script(raw: Any, where: str = "script") -> Script:
    """The script as a flat, checked graph; ScriptError listing every problem found."""
    parser = _Parser()
    if not isinstance(raw, list) or not raw:
        raise ScriptError([f"{where}: must be a non-empty list of commands"])
    parser.flatten(raw, where, continuation=OUTPUT, depth=0)
    targets = parser.resolve_edges()  # also with other errors: a dangling label is worth telling too
    if parser.errors:
        raise ScriptError(parser.errors)
    steps = parser.build(targets)
    cycle = _find_cycle(steps)
    if cycle is not None:
        raise ScriptError([cycle])
    return Script(steps=tuple(steps))


# An edge before labels are resolved: a global index, an end, or ("label", name).
_Pending = int | str | tuple[str, str]


@dataclass
class _Raw:
    where: str
    command: dict[str, Any]
    edges: dict[str, _Pending]


_BASH_KEYS = {"cmd", "on_complete", "on_fail", "label", "working_dir", "timeout"}
_CONDITION_KEYS = {"condition", "on_true", "on_false", "label"}


class _Parser:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.raw: list[_Raw] = []
        self.labels: dict[str, int] = {}

    def error(self, message: str) -> None:
        if len(self.errors) < 20:  # one bad generated script must not make a megabyte of errors
            self.errors.append(message)

    def flatten(self, commands: list[Any], where: str, continuation: _Pending, depth: int) -> int:
        """Append the list's commands (nested lists after their owner); the global index of its first."""
        if depth > MAX_DEPTH:
            self.error(f"{where}: nested more than {MAX_DEPTH} lists deep")
            return -1
        # Reserve the list's own slots first, so local indices and "next" map to global ones
        # before any nested list takes the slots after them.
        first = len(self.raw)
        if first + len(commands) > MAX_COMMANDS:
            self.error(f"{where}: the script has more than {MAX_COMMANDS} commands in all")
            return -1
        entries = [_Raw(f"{where}[{i}]", c if isinstance(c, dict) else {}, {}) for i, c in enumerate(commands)]
        self.raw.extend(entries)
        for i, (command, entry) in enumerate(zip(commands, entries, strict=True)):
            following: _Pending = first + i + 1 if i + 1 < len(commands) else continuation
            self._command(command, entry, first + i, first, len(commands), following, depth)
        return first

    def _command(
        self, command: Any, entry: _Raw, index: int, first: int, count: int, following: _Pending, depth: int
    ) -> None:
        where = entry.where
        if not isinstance(command, dict):
            self.error(f"{where}: must be an object with `cmd` or `condition`")
            return
        if "cmd" in command and "condition" in command:
            self.error(f"{where}: has both `cmd` and `condition`; a command is one or the other")
            return
        if "cmd" in command:
            allowed, edges = _BASH_KEYS, (("on_complete", NEXT), ("on_fail", ABORT))
            self._check_bash(command, where)
        elif "condition" in command:
            allowed, edges = _CONDITION_KEYS, (("on_true", NEXT), ("on_false", NEXT))
            self._check_condition(command, where)
        else:
            self.error(f"{where}: must have `cmd` (a shell command) or `condition`")
            return
        unknown = sorted(set(command) - allowed)
        if unknown:
            self.error(f"{where}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
        label = command.get("label")
        if label is not None:
            if not isinstance(label, str) or not label:
                self.error(f"{where}: label must be a non-empty string")
            elif label in RESERVED:
                self.error(f"{where}: label {label!r} is a reserved word ({', '.join(RESERVED)})")
            elif label in self.labels:
                self.error(f"{where}: label {label!r} is already used by {self.raw[self.labels[label]].where}")
            else:
                self.labels[label] = index
        for key, default in edges:
            value = command.get(key, default)
            entry.edges[key] = self._edge(value, f"{where}: {key}", first, count, following, f"{where}.{key}", depth)

    def _edge(
        self, value: Any, what: str, first: int, count: int, following: _Pending, nested_where: str, depth: int
    ) -> _Pending:
        if isinstance(value, bool):
            self.error(f"{what} must be 'next', 'output', 'abort', an index, a label or a list of commands")
            return ABORT
        if value == NEXT:
            return following
        if value in (OUTPUT, ABORT):
            return str(value)
        if isinstance(value, str):
            return ("label", value)
        if isinstance(value, int | float):
            if not (isinstance(value, int) or (math.isfinite(value) and value.is_integer())):
                self.error(f"{what} index {value} is not a whole number")
                return ABORT
            index = int(value)
            if not 0 <= index < count:
                self.error(f"{what} index {index} is out of range (its list has {count} commands)")
                return ABORT
            return first + index
        if isinstance(value, list):
            if not value:
                self.error(f"{what} is an empty list of commands")
                return ABORT
            start = self.flatten(value, nested_where, following, depth + 1)
            return start if start >= 0 else ABORT
        self.error(f"{what} must be 'next', 'output', 'abort', an index, a label or a list of commands")
        return ABORT

    def _check_bash(self, command: dict[str, Any], where: str) -> None:
        cmd = command["cmd"]
        if isinstance(cmd, list):
            if not cmd or not all(isinstance(arg, str) for arg in cmd):
                self.error(f"{where}: cmd must be a non-empty list of strings, or a string")
            elif not cmd[0]:
                self.error(f"{where}: cmd names no program (its first element is empty)")
        elif not isinstance(cmd, str) or not cmd.strip():
            self.error(f"{where}: cmd must be a non-empty list of strings, or a string")
        working_dir = command.get("working_dir")
        if working_dir is not None and (not isinstance(working_dir, str) or not working_dir):
            self.error(f"{where}: working_dir must be a non-empty string")
        timeout = command.get("timeout")
        if timeout is not None and not (
            isinstance(timeout, int | float)
            and not isinstance(timeout, bool)
            and math.isfinite(timeout)
            and timeout > 0
        ):
            self.error(f"{where}: timeout must be a positive number of seconds")

    def _check_condition(self, command: dict[str, Any], where: str) -> None:
        condition = command["condition"]
        if not isinstance(condition, dict):
            self.error(f"{where}: condition must be an object with `predicate` and `path`")
            return
        if condition.get("predicate") not in PREDICATES:
            self.error(f"{where}: condition.predicate must be one of {', '.join(PREDICATES)}")
        path = condition.get("path")
        if not isinstance(path, str) or not path:
            self.error(f"{where}: condition.path must be a non-empty string")
        unknown = sorted(set(condition) - {"predicate", "path"})
        if unknown:
            self.error(f"{where}: condition has unknown field(s) {', '.join(unknown)}")

    def resolve_edges(self) -> list[dict[str, Target]]:
        return [{key: self._target(entry, key, pending) for key, pending in entry.edges.items()} for entry in self.raw]

    def build(self, targets: list[dict[str, Target]]) -> list[Step]:
        steps: list[Step] = []
        for entry, edges in zip(self.raw, targets, strict=True):
            command = entry.command
            label = command.get("label")
            if "cmd" in command:
                cmd = command["cmd"]
                timeout = command.get("timeout")
                steps.append(
                    BashStep(
                        where=entry.where,
                        cmd=tuple(cmd) if isinstance(cmd, list) else cmd,
                        on_complete=edges["on_complete"],
                        on_fail=edges["on_fail"],
                        working_dir=command.get("working_dir"),
                        timeout_s=float(timeout) if timeout is not None else None,
                        label=label,
                    )
                )
            else:
                condition = command["condition"]
                steps.append(
                    ConditionStep(
                        where=entry.where,
                        predicate=condition["predicate"],
                        path=condition["path"],
                        on_true=edges["on_true"],
                        on_false=edges["on_false"],
                        label=label,
                    )
                )
        return steps

    def _target(self, entry: _Raw, key: str, pending: _Pending) -> Target:
        if isinstance(pending, tuple):
            name = pending[1]
            if name not in self.labels:
                self.error(f"{entry.where}: {key} label {name!r} names no command")
                return ABORT
            return self.labels[name]
        if pending == OUTPUT:
            return OUTPUT
        if pending == ABORT or isinstance(pending, str):
            return ABORT
        return pending


def successors(step: Step) -> tuple[Target, Target]:
    if isinstance(step, BashStep):
        return step.on_complete, step.on_fail
    return step.on_true, step.on_false


def _edge_names(step: Step) -> tuple[str, str]:
    return ("on_complete", "on_fail") if isinstance(step, BashStep) else ("on_true", "on_false")


def _find_cycle(steps: list[Step]) -> str | None:
    """A message naming a command whose edge closes a cycle, or None. Iterative: a long chain of
    commands must not hit Python's recursion limit."""
    white, grey, black = 0, 1, 2
    colour = [white] * len(steps)
    for root in range(len(steps)):
        if colour[root] != white:
            continue
        colour[root] = grey
        stack: list[tuple[int, int]] = [(root, 0)]
        while stack:
            node, edge = stack[-1]
            targets = successors(steps[node])
            if edge == len(targets):
                colour[node] = black
                stack.pop()
                continue
            stack[-1] = (node, edge + 1)
            target = targets[edge]
            if not isinstance(target, int):
                continue
            if colour[target] == grey:
                name = _edge_names(steps[node])[edge]
                back = steps[target].where
                return f"{steps[node].where}: {name} leads back to {back}, a cycle (the script must be acyclic)"
            if colour[target] == white:
                colour[target] = grey
                stack.append((target, 0))
    return None
