"""Cycle detection over the link graph of the rules, iterative and linear in nodes plus edges."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def find_cycle(edges: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A cycle as ``[a, b, ..., a]``, or None. Each node's edges are read once; no recursion, so a chain of
    thousands of tables cannot exhaust the stack and a diamond-shaped graph is not re-walked per path."""
    done: set[str] = set()
    for root in edges:
        if root in done:
            continue
        path = [root]
        on_path = {root}
        stack = [iter(edges[root])]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
            elif child in on_path:
                return [*path[path.index(child) :], child]
            elif child not in done:
                path.append(child)
                on_path.add(child)
                stack.append(iter(edges[child]))
    return None
