"""The composefs repository: objects, streams, images, refs, fsck."""
