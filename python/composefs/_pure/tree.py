"""The filesystem tree of a composefs image (composefs-rs ``generic_tree``/``tree``): the model
every other pure module builds or reads. It imports nothing of ours (the bottom layer; see
``docs/internals.md``, "Layering").

Model: a :class:`Directory` maps names (bytes) to :class:`Directory` or :class:`Leaf`
objects. Hard links are several entries holding the *same* :class:`Leaf` object (identity,
not equality). Names are iterated in byte order (``sorted(entries)``) by every writer.

The native twin is ``rust/tree.rs``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = [
    "BLOCK",
    "CHAR",
    "ENTER",
    "FIFO",
    "FILE",
    "LEAF",
    "LEAVE",
    "SOCKET",
    "SYMLINK",
    "Directory",
    "FileSystem",
    "Leaf",
    "Stat",
    "equal",
    "walk",
]


@dataclass
class Stat:
    """``generic_tree::Stat``. ``mode`` is kept raw (a tar header's mode may carry type bits);
    writers use ``mode & 0o7777`` plus the type of the content."""

    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime: int = 0  # seconds, signed
    mtime_nsec: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)

    def copy(self) -> Stat:
        return Stat(self.mode, self.uid, self.gid, self.mtime, self.mtime_nsec, dict(self.xattrs))


# Leaf kinds
FILE = "file"
SYMLINK = "symlink"
BLOCK = "block"
CHAR = "char"
FIFO = "fifo"
SOCKET = "socket"


@dataclass(eq=False)
class Leaf:
    """A non-directory inode. For ``kind == "file"`` exactly one representation applies:

    - inline: ``inline`` is the content (``size == len(inline)``; ``b""`` for empty files)
    - external: ``digest`` is the fs-verity object id (32 or 64 bytes), ``size`` the size;
      ``verity`` False means composefs-rs ``ExternalNoVerity``
    - sparse: ``inline is None and digest is None``, ``size`` bytes of holes
    ``target`` is a symlink's target, ``rdev`` a device number (Linux ``makedev`` encoding).
    """

    kind: str
    stat: Stat
    inline: bytes | None = None
    digest: bytes | None = None
    verity: bool = True
    size: int = 0
    target: bytes = b""
    rdev: int = 0


@dataclass(eq=False)
class Directory:
    stat: Stat
    entries: dict[bytes, Directory | Leaf] = field(default_factory=dict)


@dataclass(eq=False)
class FileSystem:
    root: Directory


#: the events of :func:`walk`
ENTER, LEAF, LEAVE = 0, 1, 2


def walk(directory: Directory) -> Iterator[tuple[int, bytes, Directory | Leaf]]:
    """Depth-first walk below ``directory``, names in byte order (the dumpfile order), without
    recursion: ``(ENTER, name, subdirectory)`` before a sub-directory's entries, ``(LEAF,
    name, leaf)``, ``(LEAVE, b"", subdirectory)`` after them."""
    stack: list[tuple[Directory, Iterator[bytes]]] = [(directory, iter(sorted(directory.entries)))]
    while stack:
        parent, names = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            if stack:
                yield LEAVE, b"", parent
            continue
        inode = parent.entries[name]
        if isinstance(inode, Directory):
            yield ENTER, name, inode
            stack.append((inode, iter(sorted(inode.entries))))
        else:
            yield LEAF, name, inode


def equal(a: FileSystem, b: FileSystem) -> bool:
    """Whether two trees are the same: names, stats, contents, and which names share a leaf
    (hard links); the identity of the objects does not matter otherwise."""
    pairs: dict[int, int] = {}
    back: dict[int, int] = {}

    def same_leaf(x: Leaf, y: Leaf) -> bool:
        seen = pairs.get(id(x))
        if seen is not None or id(y) in back:
            return seen == id(y) and back.get(id(y)) == id(x)
        pairs[id(x)] = id(y)
        back[id(y)] = id(x)
        return (x.kind, x.stat, x.inline, x.digest, x.size, x.target, x.rdev) == (
            y.kind,
            y.stat,
            y.inline,
            y.digest,
            y.size,
            y.target,
            y.rdev,
        ) and (x.digest is None or x.verity == y.verity)

    # iterative: a deep tree must not exhaust the interpreter's recursion limit
    stack = [(a.root, b.root)]
    while stack:
        x, y = stack.pop()
        if x.stat != y.stat or x.entries.keys() != y.entries.keys():
            return False
        for name, xi in x.entries.items():
            yi = y.entries[name]
            if isinstance(xi, Directory):
                if not isinstance(yi, Directory):
                    return False
                stack.append((xi, yi))
            elif isinstance(yi, Directory) or not same_leaf(xi, yi):
                return False
    return True
