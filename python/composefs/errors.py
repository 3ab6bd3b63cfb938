"""The exception hierarchy of composefs, and the rendering of an error with its causes.

Every error raised by the package derives from :class:`ComposefsError`. Each layer of the
code adds what it was doing by raising a new error ``from`` the cause, so that the chain reads
like cfsctl's (anyhow) output::

    Error: Importing layer sha256:... from oci:/path:tag

    Caused by:
        0: decompressing gzip
        1: unexpected end of stream
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

    _E = TypeVar("_E", bound=BaseException)

__all__ = [
    "AuthenticationError",
    "ComposefsError",
    "DigestMismatchError",
    "FilesystemError",
    "FsVerityError",
    "ImageNotFoundError",
    "ImageReferenceError",
    "InvalidName",
    "ObjectDigestMismatch",
    "OldFormatRepository",
    "RepositoryError",
    "RepositoryEscape",
    "RepositoryMetadataInvalid",
    "RepositoryMetadataMissing",
    "RepositoryNotWritable",
    "SourceError",
    "SplitStreamError",
    "TagNotFoundError",
    "TransportError",
    "VerityAlreadyEnabled",
    "VerityFileOpenedForWrite",
    "VerityInvalidDigest",
    "VerityMissing",
    "VerityNotSupported",
    "categories",
    "error_chain",
    "format_error",
    "with_categories",
    "wrap",
]


class ComposefsError(Exception):
    """Base class of every error raised by composefs."""


# -- what a caller most often wants to catch, whatever the layer that raised it ----------------
# The specific errors below (a layout's, a registry's, a repository's) also derive from these,
# so ``except TagNotFoundError`` works for a missing tag in a layout, a registry or a repository
# without walking ``__cause__``.


class ImageReferenceError(ComposefsError, ValueError):
    """An image reference (``TRANSPORT:NAME``, a registry name, a digest) cannot be parsed."""


class ImageNotFoundError(ComposefsError):
    """The image (a manifest, an index, a repository image) does not exist where it was
    looked for."""


class TagNotFoundError(ImageNotFoundError):
    """A tag is not present (in an OCI layout's index, a registry repository, or the
    repository's refs)."""


class DigestMismatchError(ComposefsError):
    """Content does not match the digest (or size) that names it: a blob, a layer, an object."""


class SourceError(ComposefsError):
    """Reading an image from its source (a layout, an archive, a registry) failed."""


class TransportError(SourceError):
    """A network transfer failed (connection, TLS, timeout, an HTTP error status) after the
    retries allowed."""


class AuthenticationError(TransportError):
    """A registry refused the credentials (or asked for some and none were found)."""


class FilesystemError(ComposefsError, ValueError):
    """A filesystem tree cannot be read, merged or represented (a directory scan failed, layers
    cannot be merged, an entry the image format cannot hold)."""


class FsVerityError(ComposefsError):
    """An fs-verity operation failed."""


class VerityNotSupported(FsVerityError):
    """The filesystem does not support fs-verity (ENOTTY/EOPNOTSUPP)."""


class VerityMissing(FsVerityError):
    """fs-verity is not enabled on the file (ENODATA)."""


class VerityAlreadyEnabled(FsVerityError):
    """fs-verity is already enabled on the file (EEXIST)."""


class VerityFileOpenedForWrite(FsVerityError):
    """The file still has a writable descriptor open (ETXTBSY)."""


class VerityInvalidDigest(FsVerityError):
    """The kernel measured a digest of another algorithm or size."""


class ObjectDigestMismatch(FsVerityError, DigestMismatchError):
    """An object's content does not match its expected digest."""


class SplitStreamError(ComposefsError):
    """A splitstream file is malformed or not of the expected kind."""


class RepositoryError(ComposefsError):
    """A repository operation failed."""


class InvalidName(RepositoryError):
    """A stream, image or ref name that would leave the repository (absolute, a ``..`` or
    empty component, a NUL byte): refused before anything is opened."""


class RepositoryEscape(RepositoryError):
    """A symlink inside the repository points outside it (absolute, or ``..`` past its root);
    it is never followed."""


class RepositoryNotWritable(RepositoryError):
    """The repository is on a read-only filesystem or lacks write permission."""


class RepositoryMetadataMissing(RepositoryError):
    """``meta.json`` is missing: the repository was never initialized."""


class OldFormatRepository(RepositoryError):
    """``meta.json`` is missing but ``objects/`` exists (a pre-0.7 repository)."""


class RepositoryMetadataInvalid(RepositoryError):
    """``meta.json`` cannot be parsed or is not compatible with this tool."""


# -- carrying a category through the layers ---------------------------------------------------

#: the classes a caller catches whatever layer raised the error, most specific first
CATEGORIES: tuple[type[ComposefsError], ...] = (
    AuthenticationError,
    TransportError,
    SourceError,
    TagNotFoundError,
    ImageNotFoundError,
    DigestMismatchError,
    ImageReferenceError,
    FilesystemError,
)

_COMBINED: dict[tuple[type[BaseException], tuple[type[ComposefsError], ...]], type[Any]] = {}


def categories(exc: BaseException | None) -> tuple[type[ComposefsError], ...]:
    """The :data:`CATEGORIES` that ``exc`` or one of its causes (``__cause__``) belongs to,
    each only once and only the most specific (``TagNotFoundError`` rather than
    ``ImageNotFoundError`` too)."""
    found: list[type[ComposefsError]] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for category in CATEGORIES:
            if isinstance(exc, category) and not any(issubclass(f, category) for f in found):
                found = [f for f in found if not issubclass(category, f)]
                found.append(category)
        exc = exc.__cause__
    return tuple(found)


def with_categories(cls: type[_E], *extra: type[ComposefsError]) -> type[_E]:
    """``cls``, or a subclass of it that also derives from ``extra`` (those ``cls`` does not
    derive from already). The subclass has ``cls``'s name and module, is made once per
    combination, and pickles."""
    wanted = tuple(c for c in dict.fromkeys(extra) if not issubclass(cls, c))
    if not wanted:
        return cls
    key = (cls, wanted)
    combined = _COMBINED.get(key)
    if combined is None:
        namespace = {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
            "__reduce__": _reduce_combined,
            "_combined_from": key,
        }
        # ``cls`` first, unless a category derives from it (``ComposefsError`` itself)
        first = not any(issubclass(c, cls) for c in wanted)
        bases = (cls, *wanted) if first else (*wanted, cls)
        combined = type(cls.__name__, bases, namespace)
        _COMBINED[key] = combined
    return combined


def _reduce_combined(self: BaseException) -> tuple[Any, ...]:
    cls, extra = type(self)._combined_from  # type: ignore[attr-defined]
    return (_rebuild_combined, (cls, extra, self.args), self.__dict__ or None)


def _rebuild_combined(
    cls: type[ComposefsError], extra: tuple[type[ComposefsError], ...], args: tuple[Any, ...]
) -> BaseException:
    combined = with_categories(cls, *extra)
    exc: BaseException = combined.__new__(combined, *args)
    return exc


def wrap(cls: type[_E], message: str, cause: BaseException | None, **kwargs: Any) -> _E:
    """``cls(message, **kwargs)``, to be raised ``from cause``: of a class that also derives
    from the :func:`categories` of ``cause``, so that a caller catches it as what went wrong
    underneath (``except TagNotFoundError`` catches the pull error whose cause is a missing
    tag) without walking ``__cause__``."""
    return with_categories(cls, *categories(cause))(message, **kwargs)


def error_chain(exc: BaseException) -> list[str]:
    """The messages of ``exc`` and of its causes, outermost first."""
    messages: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        messages.append(_message(current))
        current = current.__cause__
    return messages


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
        if exc.filename is not None:
            text += f": {exc.filename}"
        return f"{text} (os error {exc.errno})" if exc.errno else text
    text = str(exc)
    return text if text else type(exc).__name__


def format_error(exc: BaseException) -> str:
    """Formats ``exc`` with its causes the way cfsctl (anyhow) prints an error.

    Messages can carry untrusted text (tags, file names, registry replies): their control
    characters are escaped (:func:`composefs._text.printable`); the only line breaks are the
    ones added here.
    """
    from composefs._text import printable

    first, *causes = (printable(m) for m in error_chain(exc))
    out = f"Error: {first}"
    if len(causes) == 1:
        out += f"\n\nCaused by:\n    {causes[0]}"
    elif causes:
        out += "\n\nCaused by:\n" + "\n".join(f"{i:5}: {c}" for i, c in enumerate(causes))
    return out
