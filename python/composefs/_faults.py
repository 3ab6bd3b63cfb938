"""Fault injection for the crash-consistency tests: a test hook, not an API.

A pull calls :func:`point` at a few named moments (``docs/internals.md``, "Crash
consistency")::

    layer-objects-written   a layer's objects are stored, its stream not yet linked
    layers-imported         every layer stream is linked; no config or manifest stream yet
    manifest-stored         config and manifest streams linked; no EROFS image yet
    image-linked            the EROFS image is linked (images/<id>); config and manifest not
                            yet rewritten with its refs, nothing tagged
    before-tag              everything stored and rewritten (index streams too); no tag yet
    tagged                  the tag is written (the pull is complete)

When the environment variable ``COMPOSEFS_FAULT`` (read once, at import) names the point, the
process kills itself with ``SIGKILL`` there: no ``finally`` block, no ``atexit`` handler, no
buffered write runs, as after a power cut of the process. Unset (always, outside the tests),
:func:`point` is one comparison.
"""

from __future__ import annotations

import os
import signal

__all__ = ["POINTS", "point"]

#: every point :func:`point` is called with, in the order a pull reaches them
POINTS = (
    "layer-objects-written",
    "layers-imported",
    "manifest-stored",
    "image-linked",
    "before-tag",
    "tagged",
)

_ARMED = os.environ.get("COMPOSEFS_FAULT") or None


def point(name: str) -> None:
    """Kills the process with ``SIGKILL`` if ``COMPOSEFS_FAULT`` is ``name``; else nothing."""
    if _ARMED is not None and name == _ARMED:
        os.kill(os.getpid(), signal.SIGKILL)
