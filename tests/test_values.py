"""certkeeper.values makes the classes that dataclasses made before (issue 23: in a seventh of the time, without
importing dataclasses and inspect), so each behaviour that the rest of certkeeper relies on is checked here
against dataclasses' own, class shape by class shape."""

from __future__ import annotations

import copy
import dataclasses
import os
import pickle
import subprocess
import sys
from typing import ClassVar

import pytest

from certkeeper import values
from certkeeper.values import field, frozen, mutable


@frozen
class Plain:
    name: str
    port: int = 25
    names: tuple[str, ...] = field(default_factory=tuple)
    secret: bytes = field(default=b"", repr=False)
    kind: ClassVar[str] = "plain"


@dataclasses.dataclass(frozen=True)
class PlainTwin:
    name: str
    port: int = 25
    names: tuple[str, ...] = dataclasses.field(default_factory=tuple)
    secret: bytes = dataclasses.field(default=b"", repr=False)
    kind: ClassVar[str] = "plain"


@frozen
class Base:
    at: int


@frozen
class Derived(Base):
    what: str


@frozen(order=True)
class Ranked:
    rank: int
    label: str = ""


@mutable
class Counter:
    seen: list[str] = field(default_factory=list)


@frozen
class OwnMethods:
    text: str

    def __repr__(self) -> str:
        return f"<{self.text}>"

    def __hash__(self) -> int:
        return 7


def test_init_repr_eq_and_hash_are_what_dataclass_writes() -> None:
    shapes: list[dict[str, object]] = [{"name": "mx"}, {"name": "mx", "port": 587, "names": ("a", "b"), "secret": b"k"}]
    for given in shapes:
        ours, theirs = Plain(**given), PlainTwin(**given)  # type: ignore[arg-type]
        assert repr(ours).replace("Plain", "PlainTwin", 1) == repr(theirs)
        assert hash(ours) == hash(theirs)
        assert ours == Plain(**given)  # type: ignore[arg-type]
        others: list[object] = [theirs, dataclasses.astuple(theirs)]
        assert all(ours != other for other in others)  # another class is never equal
    assert "secret" not in repr(Plain("mx", secret=b"key"))
    assert Plain.kind == "plain" and [f.name for f in values.fields(Plain)] == ["name", "port", "names", "secret"]
    assert Plain.__match_args__ == PlainTwin.__match_args__


def test_each_instance_gets_its_own_default_from_the_factory() -> None:
    first, second = Counter(), Counter()
    first.seen.append("x")
    assert second.seen == [] and Counter.__hash__ is None  # mutable and comparable: not hashable, as dataclass


def test_frozen_refuses_assignment_and_deletion_as_dataclass_does() -> None:
    value = Plain("mx")
    with pytest.raises(values.FrozenInstanceError, match="port"):
        value.port = 26  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del value.name
    assert value.port == 25


def test_replace_keeps_the_other_fields_and_refuses_an_unknown_one() -> None:
    value = Plain("mx", names=("a",))
    assert values.replace(value, port=465) == Plain("mx", 465, ("a",))
    with pytest.raises(TypeError, match="prot"):
        values.replace(value, prot=465)
    with pytest.raises(TypeError, match="not a value class"):
        values.replace(PlainTwin("mx"))  # a dataclass is not one


def test_fields_of_a_base_come_first_and_subclasses_compare_by_class() -> None:
    assert Derived(1, "x") == Derived(at=1, what="x") and repr(Derived(1, "x")) == "Derived(at=1, what='x')"
    assert Base(1) != Derived(1, "x")


def test_order_compares_field_by_field_within_one_class() -> None:
    assert sorted([Ranked(2), Ranked(1, "b"), Ranked(1, "a")]) == [Ranked(1, "a"), Ranked(1, "b"), Ranked(2)]
    with pytest.raises(TypeError):
        _ = Ranked(1) < Plain("mx")  # type: ignore[operator]


def test_what_the_class_body_defines_is_kept() -> None:
    assert repr(OwnMethods("x")) == "<x>" and hash(OwnMethods("y")) == 7 and OwnMethods("x") == OwnMethods("x")


def test_a_field_without_a_default_after_one_with_is_refused_when_the_class_is_made() -> None:
    with pytest.raises(TypeError, match="'late' without a default follows"):
        @frozen
        class _Wrong:
            early: int = 1
            late: int  # type: ignore[misc]  # what mypy refuses too


def test_values_copy_and_pickle() -> None:
    value = Plain("mx", names=("a",))
    assert copy.copy(value) == value == copy.deepcopy(value) == pickle.loads(pickle.dumps(value))


def test_a_class_variable_in_a_string_annotation_is_not_a_field_without_typing_loaded() -> None:
    # ClassVar as the source spells it, with typing never imported (as on the path of one check), where
    # dataclasses would take it for a field.
    program = ("from __future__ import annotations\nimport sys\nfrom certkeeper.values import frozen\n"
               "@frozen\nclass C:\n    a: int\n    limit: ClassVar[int] = 3\n"
               "print(C(1), C.limit, 'typing' in sys.modules, 'dataclasses' in sys.modules)\n")
    # Without the suite's coverage measurement, which loads both in the child itself.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True,
                          env=env)
    assert done.stdout.split() == ["C(a=1)", "3", "False", "False"]
