"""The error tree drawn at the top of syncworker/errors.py is the tree of its classes."""

from __future__ import annotations

import inspect
import re

from syncworker import errors


def drawn_tree() -> dict[str, str | None]:
    """Each class the drawing names -> the class it is drawn under (None for the root)."""
    doc = (errors.__doc__ or "").splitlines()
    start = doc.index("SyncWorkerError")  # the drawing: from its root to the docstring's end
    lines = [line for line in doc[start:] if line.strip()]
    parents: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []  # (depth, name)
    for line in lines:
        match = re.match(r"^([│├└─ ]*)([A-Z]\w+)", line)
        assert match is not None
        prefix, name = match.groups()
        depth = len(prefix) // 4
        while stack and stack[-1][0] >= depth:
            stack.pop()
        parents[name] = stack[-1][1] if stack else None
        stack.append((depth, name))
    return parents


def class_tree() -> dict[str, str | None]:
    tree: dict[str, str | None] = {}
    for name, obj in vars(errors).items():
        if inspect.isclass(obj) and issubclass(obj, errors.SyncWorkerError):
            if obj.__module__ != errors.__name__:
                continue
            base = obj.__bases__[0]
            tree[name] = None if obj is errors.SyncWorkerError else base.__name__
    return tree


def test_the_drawing_names_every_error_class_under_its_base() -> None:
    drawn = drawn_tree()
    assert drawn == class_tree()
    assert len(drawn) >= 13  # the drawing was read: it names every class


def test_the_drawing_gives_each_intake_error_its_status() -> None:
    doc = errors.__doc__ or ""
    for cls in errors.IntakeError.__subclasses__():
        line = next(line for line in doc.splitlines() if f"─ {cls.__name__} " in line)
        assert str(cls.status) in line, cls.__name__


def test_a_class_missing_from_the_drawing_is_found() -> None:
    """The reader is not blind: dropping a line of the drawing makes the trees differ."""
    drawn = drawn_tree()
    drawn.pop("Unavailable")
    assert drawn != class_tree()
