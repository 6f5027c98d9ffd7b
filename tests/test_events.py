"""Events compare, hash, print and refuse changes as frozen dataclasses would: they are frozen value classes
(certkeeper.values), which must write what dataclass would."""

from __future__ import annotations

import dataclasses
import inspect
from datetime import UTC, datetime

import pytest

from certkeeper import events, values

NOW = datetime(2026, 12, 1, tzinfo=UTC)
EVENT_TYPES = [c for _, c in inspect.getmembers(events, inspect.isclass)
               if issubclass(c, events.Event) and c.__module__ == events.__name__]


def sample(cls: type[events.Event], salt: str = "") -> events.Event:
    given: dict[str, object] = {f.name: NOW if f.name == "at" else f"{f.name}{salt}" for f in values.fields(cls)}
    return cls(**given)  # type: ignore[arg-type]  # strings stand in for every field but `at`


def reference(event: events.Event) -> object:
    """The same fields as a plain frozen dataclass (dataclass's own __eq__, __hash__, __repr__)."""
    twin = dataclasses.make_dataclass(type(event).__qualname__, [f.name for f in values.fields(event)],
                                      frozen=True)
    return twin(**{f.name: getattr(event, f.name) for f in values.fields(event)})


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda c: c.__name__)
def test_every_event_behaves_as_its_frozen_dataclass(cls: type[events.Event]) -> None:
    event, same, other = sample(cls), sample(cls), sample(cls, "-other")
    twin = reference(event)
    assert repr(event) == repr(twin)
    assert event == same and hash(event) == hash(same) == hash(twin)
    assert (event == other) == (len(values.fields(cls)) == 1)  # only `at`: nothing else to differ
    with pytest.raises(values.FrozenInstanceError):
        event.at = NOW  # type: ignore[misc]


def test_events_of_different_types_with_equal_fields_differ() -> None:
    installed = events.CertificateInstalled(NOW, "mail", "v1")
    fields = {f.name: getattr(installed, f.name) for f in values.fields(installed)}
    twin = dataclasses.make_dataclass("CertificateInstalled", list(fields), frozen=True)(**fields)
    assert installed != twin and twin != installed
    assert len({installed, events.CertificateInstalled(NOW, "mail", "v1")}) == 1
