"""Records: what ``@dataclasses.dataclass(frozen=True)`` gives our plain value classes, without
its cost at start-up.

:mod:`dataclasses` imports :mod:`inspect` (with ``ast``, ``dis``, ``tokenize``) and compiles
the source of five or six methods per class: for the fourteen classes that ``composefs oci
images`` needs, more time than all the rest of the command. :func:`record` builds the same
methods from closures instead (nothing compiled), for classes whose fields are declared the
dataclass way (annotated class attributes, defaults, :func:`field` for a ``default_factory``):

* ``__init__`` taking the fields positionally or by keyword (defaults, factories; the same
  ``TypeError``\\ s for a missing, unknown or repeated argument);
* ``__repr__``, ``__eq__`` (same class, equal fields), ``__match_args__``;
* frozen (the default): assignment and deletion raise :class:`FrozenInstanceError` (an
  ``AttributeError``), and ``__hash__`` hashes the fields; ``frozen=False``: unhashable, like a
  dataclass with ``eq``.

:func:`replace`, :func:`asdict` and :func:`fields` stand in for their :mod:`dataclasses`
namesakes. Type checkers see a dataclass (:func:`typing.dataclass_transform`). Instance
creation is a little slower than a dataclass's (the arguments are bound in a loop); these
classes are created by the handful, per image or per descriptor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar, dataclass_transform, overload

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["FrozenInstanceError", "asdict", "field", "fields", "record", "replace"]

_T = TypeVar("_T")
_MISSING: Any = object()


class FrozenInstanceError(AttributeError):
    """A field of a frozen record was assigned or deleted."""


class _Field:
    __slots__ = ("default", "default_factory", "repr")

    def __init__(self, default: Any, default_factory: Any, repr: bool) -> None:
        self.default = default
        self.default_factory = default_factory
        self.repr = repr


def field(
    *,
    default: Any = _MISSING,
    default_factory: Callable[[], Any] = _MISSING,
    repr: bool = True,
) -> Any:
    """A field's default (``default`` or ``default_factory``) and whether ``repr`` shows it."""
    return _Field(default, default_factory, repr)


@overload
def record(cls: type[_T], /) -> type[_T]: ...


@overload
def record(*, frozen: bool = True) -> Callable[[type[_T]], type[_T]]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: Any = None, /, *, frozen: bool = True) -> Any:
    """Makes ``cls`` a record (see the module's documentation)."""
    if cls is None:
        return lambda c: _make(c, frozen)
    return _make(cls, frozen)


def _make(cls: Any, frozen: bool) -> Any:
    names: list[str] = []
    defaults: dict[str, Any] = {}
    factories: dict[str, Callable[[], Any]] = {}
    hidden: set[str] = set()
    for base in reversed(cls.__mro__[1:]):
        inherited = base.__dict__.get("__record_fields__")
        if inherited is not None:
            for name in inherited:
                if name not in names:
                    names.append(name)
            defaults.update(base.__record_defaults__)
            factories.update(base.__record_factories__)
    # the class's own annotations (postponed: strings); not inspect.get_annotations, which
    # would import inspect, the cost this module avoids
    own: dict[str, Any] = cls.__dict__.get("__annotations__", {})  # noqa: RUF063
    for name, annotation in own.items():
        if "ClassVar" in str(annotation):
            continue
        if name not in names:
            names.append(name)
        value = cls.__dict__.get(name, _MISSING)
        if isinstance(value, _Field):
            if value.default_factory is not _MISSING:
                factories[name] = value.default_factory
            elif value.default is not _MISSING:
                defaults[name] = value.default
            if not value.repr:
                hidden.add(name)
            if value.default is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, value.default)
        elif value is not _MISSING:
            defaults[name] = value
    order = tuple(names)
    known = frozenset(order)
    shown = tuple(n for n in order if n not in hidden)
    qualname = cls.__qualname__
    set_field = object.__setattr__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(order):
            raise TypeError(
                f"{qualname}() takes {len(order)} positional arguments but {len(args)} were given"
            )
        values = dict(zip(order, args, strict=False))
        for key, value in kwargs.items():
            if key not in known:
                raise TypeError(f"{qualname}() got an unexpected keyword argument {key!r}")
            if key in values:
                raise TypeError(f"{qualname}() got multiple values for argument {key!r}")
            values[key] = value
        for name in order:
            if name in values:
                value = values[name]
            elif name in defaults:
                value = defaults[name]
            elif name in factories:
                value = factories[name]()
            else:
                raise TypeError(f"{qualname}() missing required argument: {name!r}")
            set_field(self, name, value)

    def __repr__(self: Any) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in shown)
        return f"{type(self).__qualname__}({inner})"

    def __eq__(self: Any, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in order)

    namespace: dict[str, Any] = {
        "__init__": __init__,
        "__repr__": __repr__,
        "__eq__": __eq__,
        "__match_args__": order,
        "__record_fields__": order,
        "__record_defaults__": defaults,
        "__record_factories__": factories,
    }
    if frozen:

        def __setattr__(self: Any, name: str, value: Any) -> None:
            raise FrozenInstanceError(f"cannot assign to field {name!r}")

        def __delattr__(self: Any, name: str) -> None:
            raise FrozenInstanceError(f"cannot delete field {name!r}")

        def __hash__(self: Any) -> int:
            return hash(tuple(getattr(self, n) for n in order))

        namespace.update(__setattr__=__setattr__, __delattr__=__delattr__, __hash__=__hash__)
    else:
        namespace["__hash__"] = None
    for key, value in namespace.items():
        if key in cls.__dict__:
            continue  # what the class defines itself wins, as with a dataclass
        if callable(value):
            value.__qualname__ = f"{qualname}.{key}"
        setattr(cls, key, value)
    return cls


def fields(obj: Any) -> tuple[str, ...]:
    """The field names of a record (class or instance), in order."""
    names: tuple[str, ...] = obj.__record_fields__
    return names


def replace(obj: _T, /, **changes: Any) -> _T:
    """A copy of the record ``obj`` with ``changes`` (``dataclasses.replace``)."""
    values = {n: getattr(obj, n) for n in fields(obj)}
    values.update(changes)
    return type(obj)(**values)


def asdict(obj: Any) -> Any:
    """The record as a dict, records, lists, tuples and dicts in it converted in turn
    (``dataclasses.asdict``)."""
    if hasattr(type(obj), "__record_fields__"):
        return {n: asdict(getattr(obj, n)) for n in fields(obj)}
    if isinstance(obj, list | tuple):
        return type(obj)(asdict(v) for v in obj)
    if isinstance(obj, dict):
        return {asdict(k): asdict(v) for k, v in obj.items()}
    return obj
