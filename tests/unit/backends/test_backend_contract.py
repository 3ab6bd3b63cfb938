"""Both backends implement the same contract (``composefs._contract``): the same backend
modules, the same public names per module (``__all__``), the same signatures (native PyO3
functions carry ``__text_signature__``), the same methods and properties per class, and each
module has the names of its Protocol.

mypy checks the types statically (``composefs._backend``); this checks the names at run time,
on the real modules, not on the stubs. A native build that predates the contract fails here;
only a missing native extension is skipped (``support.load_backend``'s rule).
"""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any

import pytest

from composefs import _contract
from support import load_backend

MODULES = sorted(_contract.BACKEND_MODULES)


def _package(name: str) -> ModuleType:
    return load_backend(name).package


def _module(backend: str, name: str) -> ModuleType:
    module = getattr(_package(backend), name, None)
    assert module is not None, f"backend {backend!r} has no module {name!r}"
    return module  # type: ignore[no-any-return]


def _protocol_members(protocol: type) -> set[str]:
    return {n for n in vars(protocol) if not n.startswith("_")}


def _parameters(obj: Any) -> list[tuple[str, str, object]]:
    """``(name, kind, default)`` of a callable, ``self`` dropped; a default the native side
    cannot show (``...``) is kept as ``...``."""
    out = []
    for p in inspect.signature(obj).parameters.values():
        if p.name == "self":
            continue
        kind = "positional" if p.kind is p.POSITIONAL_OR_KEYWORD else p.kind.name
        default = p.default
        if isinstance(default, (list, tuple)):
            default = tuple(default)
        out.append((p.name, kind, default))
    return out


def _same_parameters(native: Any, pure: Any, what: str) -> None:
    ours = _parameters(pure)
    theirs = _parameters(native)
    assert [p[:2] for p in theirs] == [p[:2] for p in ours], what
    for (name, _, d_native), (_, _, d_pure) in zip(theirs, ours, strict=True):
        if d_native is Ellipsis:  # PyO3 shows a non-literal default as `...`
            assert d_pure is not inspect.Parameter.empty, f"{what}: {name} has no default"
        else:
            assert d_native == d_pure, f"{what}: default of {name}"


def test_the_same_backend_modules() -> None:
    for backend in ("python", "native"):
        package = _package(backend)
        missing = [m for m in MODULES if not hasattr(package, m)]
        assert not missing, f"backend {backend!r} lacks {missing}"


@pytest.mark.parametrize("name", MODULES)
def test_module_names_are_the_protocol(name: str) -> None:
    expected = _protocol_members(_contract.BACKEND_MODULES[name])
    for backend in ("python", "native"):
        module = _module(backend, name)
        assert set(module.__all__) == expected, f"{backend} {name}.__all__"
        for member in expected:
            assert hasattr(module, member), f"{backend} {name} lacks {member}"


@pytest.mark.parametrize("name", MODULES)
def test_same_signatures(name: str) -> None:
    native = _module("native", name)
    pure = _module("python", name)
    for member in sorted(_protocol_members(_contract.BACKEND_MODULES[name])):
        n_obj = getattr(native, member)
        p_obj = getattr(pure, member)
        what = f"{name}.{member}"
        assert isinstance(n_obj, type) == isinstance(p_obj, type), what
        _same_parameters(n_obj, p_obj, what)
        if isinstance(p_obj, type):
            _same_class(n_obj, p_obj, what)


def _same_class(native: type, pure: type, what: str) -> None:
    def public(cls: type) -> dict[str, Any]:
        return {
            n: inspect.getattr_static(cls, n)
            for n in dir(cls)
            if not n.startswith("_") and n not in dir(object)
        }

    n_members = public(native)
    p_members = public(pure)
    assert set(n_members) == set(p_members), what
    for member, p_attr in p_members.items():
        n_attr = n_members[member]
        if isinstance(p_attr, property):
            assert inspect.isdatadescriptor(n_attr), f"{what}.{member} is a property"
        else:
            _same_parameters(getattr(native, member), getattr(pure, member), f"{what}.{member}")


@pytest.mark.parametrize("name", ["HasherLike", "WriterLike"])
def test_instance_protocols(name: str) -> None:
    """The classes' instances have the members of their Protocol."""
    protocol = getattr(_contract, name)
    cls_name = "Hasher" if name == "HasherLike" else "Writer"
    module = "fsverity" if name == "HasherLike" else "splitstream"
    for backend in ("python", "native"):
        cls = getattr(_module(backend, module), cls_name)
        missing = [m for m in _protocol_members(protocol) if not hasattr(cls, m)]
        assert not missing, f"{backend} {module}.{cls_name} lacks {missing}"
