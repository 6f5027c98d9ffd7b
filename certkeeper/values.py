"""Value classes: ``@frozen`` makes a class a record of its annotated fields, as ``@dataclass(frozen=True)`` would.

``@mutable`` makes one whose fields can be assigned, as ``@dataclass`` would (and, like it, not hashable).
It writes the same ``__init__``, ``__eq__``, ``__hash__``, ``__repr__`` (and, with ``order=True``, the
comparisons), so instances behave as the dataclasses' did: equal when of the same class with equal fields,
hashable when frozen, ``Name(field=value, ...)`` when printed.  It makes a class in a seventh of the time and
without importing ``dataclasses`` (which brings ``inspect``, ``ast``, ``dis`` and ``tokenize``): a ``renew`` with
nothing due creates some sixty value classes and one ``check`` ten, and issue 23 measured their creation as the
largest part of what either costs above the floor of its work.

Only ``__init__`` is generated as source (one ``exec``), so that constructing a value stays as fast as a
dataclass's; the other methods are shared functions reading the class's field names.  Fields annotated
``ClassVar[...]`` (as a string too, with ``from __future__ import annotations``, without ``typing`` loaded) are
class attributes, not fields.  :func:`replace` and :func:`fields` stand in for ``dataclasses``' own.
"""

from __future__ import annotations

from operator import attrgetter

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform

    _V = TypeVar("_V")
else:
    def dataclass_transform(**_options):  # the type checker's marker; nothing to do at run time
        return lambda decorator: decorator


class FrozenInstanceError(AttributeError):
    """Assigning to (or deleting) an attribute of a frozen value."""


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class Field:
    """One field of a value class, as :func:`field` declared it (or as its plain default implied)."""

    __slots__ = ("compare", "default", "default_factory", "name", "repr")

    def __init__(self, default: Any = MISSING, default_factory: Any = MISSING, repr: bool = True,
                 compare: bool = True) -> None:
        if default is not MISSING and default_factory is not MISSING:
            msg = "cannot give both default and default_factory"
            raise ValueError(msg)
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.repr = repr
        self.compare = compare

    def __repr__(self) -> str:
        return f"Field({self.name!r})"


def field(*, default: Any = MISSING, default_factory: Callable[[], Any] | Any = MISSING, repr: bool = True,
          compare: bool = True) -> Any:
    """A field with a default made by ``default_factory()`` for each instance, or left out of ``repr`` or ``==``."""
    return Field(default, default_factory, repr, compare)


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def frozen(cls: type | None = None, /, *, eq: bool = True, order: bool = False, repr: bool = True) -> Any:
    """Make ``cls`` a frozen value class: ``@frozen``, or ``@frozen(order=True)`` and the like for the options."""
    def wrap(cls: type) -> type:
        return _make(cls, frozen=True, eq=eq, order=order, show=repr)
    return wrap if cls is None else wrap(cls)


@dataclass_transform(field_specifiers=(field,))
def mutable(cls: type | None = None, /, *, eq: bool = True, repr: bool = True) -> Any:
    """Make ``cls`` a value class whose fields can be assigned: ``@mutable``, or ``@mutable(eq=False)``."""
    def wrap(cls: type) -> type:
        return _make(cls, frozen=False, eq=eq, order=False, show=repr)
    return wrap if cls is None else wrap(cls)


def fields(thing: object) -> tuple[Field, ...]:
    """The fields of a value class or of one of its instances, in declaration order (the bases' first)."""
    found: tuple[Field, ...] | None = getattr(thing, "__value_fields__", None)
    if found is None:
        msg = f"{thing!r} is not a value class or instance of one"
        raise TypeError(msg)
    return found


def is_value(thing: object) -> bool:
    """``thing`` is an instance of a value class (not the class itself)."""
    return not isinstance(thing, type) and hasattr(thing, "__value_fields__")


def replace(instance: _V, /, **changes: Any) -> _V:
    """A copy of ``instance`` with the fields named in ``changes`` set to their values."""
    for f in fields(instance):
        if f.name not in changes:
            changes[f.name] = getattr(instance, f.name)
    return type(instance)(**changes)


# -- making a class -------------------------------------------------------------------------------------------

def _make(cls: type, *, frozen: bool, eq: bool, order: bool, show: bool) -> type:
    own = cls.__dict__
    found: dict[str, Field] = {}
    for base in reversed(cls.__mro__[1:]):
        for f in base.__dict__.get("__value_fields__", ()):
            found[f.name] = f
    for name, annotation in own.get("__annotations__", {}).items():
        if _is_class_var(annotation):
            continue
        declared = own.get(name, MISSING)
        f = declared if isinstance(declared, Field) else Field(default=declared)
        f.name = name
        if isinstance(declared, Field):  # the class attribute is the default, as with dataclasses, or nothing
            if f.default is MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, f.default)
        found[name] = f
    every = tuple(found.values())
    cls.__value_fields__ = every  # type: ignore[attr-defined]

    _set(cls, "__init__", _init(cls, every, frozen))
    _set(cls, "__match_args__", tuple(f.name for f in every))
    if show:
        _set(cls, "__repr__", _repr)
    if eq or order:
        cls.__value_key__ = staticmethod(_key([f.name for f in every if f.compare]))  # type: ignore[attr-defined]
    if eq:
        _set(cls, "__eq__", _eq)
        if not _has_own_hash(own):
            cls.__hash__ = _hash if frozen else None  # type: ignore[assignment,method-assign]
    if order:
        for name, compare in _ORDER.items():
            if name in own:
                msg = f"{cls.__qualname__} defines {name}: order=True would replace it"
                raise TypeError(msg)
            setattr(cls, name, compare)
    if frozen:
        cls.__setattr__ = _frozen_setattr  # type: ignore[method-assign,assignment]
        cls.__delattr__ = _frozen_delattr  # type: ignore[method-assign,assignment]
    return cls


def _is_class_var(annotation: object) -> bool:
    if isinstance(annotation, str):
        return annotation.startswith(("ClassVar", "typing.ClassVar"))
    form = getattr(annotation, "__origin__", annotation)  # ClassVar[int] or the bare ClassVar
    return type(form).__module__ == "typing" and getattr(form, "_name", None) == "ClassVar"


def _has_own_hash(own: Any) -> bool:
    """The class body defines ``__hash__`` itself (Python writes ``__hash__ = None`` beside an own ``__eq__``)."""
    return "__hash__" in own and not (own["__hash__"] is None and "__eq__" in own)


def _set(cls: type, name: str, attribute: object) -> None:
    if name not in cls.__dict__:  # what the class body defines itself is kept, as dataclasses keep it
        setattr(cls, name, attribute)


def _init(cls: type, every: tuple[Field, ...], frozen: bool) -> Callable[..., None]:
    """``__init__`` as source: positional-or-keyword parameters in field order, defaults and factories bound."""
    scope: dict[str, Any] = {"_MISSING": MISSING}
    parameters, body = [], []
    for f in every:
        target = f"_fields_of_self[{f.name!r}]" if frozen else f"self.{f.name}"
        if f.default_factory is not MISSING:
            scope[f"_factory_{f.name}"] = f.default_factory
            parameters.append(f"{f.name}=_MISSING")
            body.append(f"{target} = _factory_{f.name}() if {f.name} is _MISSING else {f.name}")
        else:
            if f.default is not MISSING:
                scope[f"_default_{f.name}"] = f.default
                parameters.append(f"{f.name}=_default_{f.name}")
            elif parameters and parameters[-1].find("=") > 0:
                msg = f"{cls.__qualname__}: field {f.name!r} without a default follows one with a default"
                raise TypeError(msg)
            else:
                parameters.append(f.name)
            body.append(f"{target} = {f.name}")
    if frozen and body:
        body.insert(0, "_fields_of_self = self.__dict__")  # a frozen value's fields are written past __setattr__
    if hasattr(cls, "__post_init__"):
        body.append("self.__post_init__()")
    source = f"def __init__(self, {', '.join(parameters)}):\n " + "\n ".join(body or ["pass"])
    exec(source, scope)  # the source is made of field names, which are identifiers
    init: Callable[..., None] = scope["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    return init


def _key(names: list[str]) -> Callable[[object], tuple[object, ...]]:
    """The compared fields of an instance as one tuple (what ``==``, the hash and the ordering use)."""
    if not names:
        return lambda _: ()
    if len(names) == 1:
        one = attrgetter(names[0])
        return lambda instance: (one(instance),)
    return attrgetter(*names)


def _repr(self: Any) -> str:
    shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in self.__value_fields__ if f.repr)
    return f"{type(self).__qualname__}({shown})"


def _eq(self: Any, other: Any) -> Any:  # bool, or NotImplemented
    if other.__class__ is not self.__class__:
        return NotImplemented
    key: Callable[[object], tuple[object, ...]] = self.__value_key__
    return key(self) == key(other)


def _hash(self: Any) -> int:
    return hash(self.__value_key__(self))


def _compare(name: str, test: Callable[[tuple[object, ...], tuple[object, ...]], bool]) -> Callable[..., bool]:
    def compare(self: Any, other: Any) -> Any:  # bool, or NotImplemented
        if other.__class__ is not self.__class__:
            return NotImplemented
        key: Callable[[object], tuple[object, ...]] = self.__value_key__
        return test(key(self), key(other))
    compare.__name__ = name
    return compare


_ORDER = {"__lt__": _compare("__lt__", lambda a, b: a < b), "__le__": _compare("__le__", lambda a, b: a <= b),
          "__gt__": _compare("__gt__", lambda a, b: a > b), "__ge__": _compare("__ge__", lambda a, b: a >= b)}


def _frozen_setattr(_self: object, name: str, _value: object) -> None:
    msg = f"cannot assign to field {name!r}"
    raise FrozenInstanceError(msg)


def _frozen_delattr(_self: object, name: str) -> None:
    msg = f"cannot delete field {name!r}"
    raise FrozenInstanceError(msg)
