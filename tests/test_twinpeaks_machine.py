"""The TwinPeaks roles run spec/twinpeaks.yaml through typed handler tables.

* each role's table answers exactly the guards, actions and builders its machine names, and
  ``d2tls model lint`` (the build-time check) reports a handler missing from a table or one
  the spec does not name;
* handlers are private methods that take their message as an argument: no role exposes a
  spec callback as a public name, and none keeps the message in ``_current``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from d2tls.core.errors import SpecError
from d2tls.core.model.codegen import _twinpeaks_tables, lint
from d2tls.core.model.machine import Handlers, table_problems
from d2tls.core.model.spec import load_spec
from d2tls.core.twinpeaks import client, keyserver, member, resolver

ROLE_CLASSES: dict[str, type] = {
    "key_server": keyserver.KeyServer,
    "member": member.Member,
    "resolver": resolver.Lookup,
    "client": client.TwinPeaksClient,
}


def test_the_twinpeaks_tables_answer_exactly_the_spec() -> None:
    tables = dict(_twinpeaks_tables())
    assert set(tables) == set(ROLE_CLASSES) == set(load_spec("twinpeaks").roles)
    for name, names in tables.items():
        role = load_spec("twinpeaks").role(name)
        assert table_problems(role, names) == []
        assert names.guards == frozenset(role.guards())
        assert names.actions == frozenset(role.actions())
        assert names.builders == frozenset(role.built_messages())
    assert lint() == []


def _patch_table(
    monkeypatch: pytest.MonkeyPatch,
    cls: type,
    change: Callable[[Handlers[object]], Handlers[object]],
) -> None:
    original = cls._handlers  # type: ignore[attr-defined]

    def patched(self: object) -> Handlers[object]:
        return change(original(self))

    monkeypatch.setattr(cls, "_handlers", patched)


@pytest.mark.parametrize("role_name", sorted(ROLE_CLASSES))
def test_lint_reports_a_missing_twinpeaks_handler(
    role_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    role = load_spec("twinpeaks").role(role_name)
    dropped = sorted(role.actions())[0]

    def drop(table: Handlers[object]) -> Handlers[object]:
        actions = {k: v for k, v in table.actions.items() if k != dropped}
        return dataclasses.replace(table, actions=actions)

    _patch_table(monkeypatch, ROLE_CLASSES[role_name], drop)
    problems = lint()
    assert problems == [f"role {role_name}: no actions handler for ['{dropped}']"]


@pytest.mark.parametrize("role_name", sorted(ROLE_CLASSES))
def test_lint_reports_an_extra_twinpeaks_handler(
    role_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def add(table: Handlers[object]) -> Handlers[object]:
        guards = {**table.guards, "always": lambda _message: True}
        return dataclasses.replace(table, guards=guards)

    _patch_table(monkeypatch, ROLE_CLASSES[role_name], add)
    assert lint() == [f"role {role_name}: guards handlers the spec does not name: ['always']"]
    with pytest.raises(SpecError, match="the spec does not name"):
        _twinpeaks_tables()


def test_spec_callbacks_are_not_public_names() -> None:
    """The public API is the sans-IO calls and the application calls; the spec's guards,
    actions and builders are private (the machine gets them through the typed table)."""
    for role_name, cls in ROLE_CLASSES.items():
        role = load_spec("twinpeaks").role(role_name)
        callbacks = (
            set(role.guards())
            | set(role.actions())
            | {f"build_{m}" for m in role.built_messages()}
            | {f"build_{m}" for t in role.transitions for m in t.emits}
            | {"emit_flight"}
        )
        assert callbacks & set(dir(cls)) == set(), role_name


def test_no_role_keeps_its_message_in_current() -> None:
    for module in (client, keyserver, member, resolver):
        assert module.__file__ is not None
        assert "_current" not in Path(module.__file__).read_text(encoding="utf-8")
