"""The filesystem tree of a composefs image: :class:`FileSystem` of :class:`Directory` and
:class:`Leaf` objects with their :class:`Stat`. Hard links are one :class:`Leaf` object under
several names. Read one from a directory with :func:`composefs.fs.read_directory` or from a
dumpfile with :func:`composefs.dumpfile.parse`; write it with :func:`composefs.dumpfile.write`
and turn that into an image with :func:`composefs.erofs.mkfs`."""

from composefs._pure.tree import Directory, FileSystem, Leaf, Stat

__all__ = ["Directory", "FileSystem", "Leaf", "Stat"]
