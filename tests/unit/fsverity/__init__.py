"""fs-verity digests and the kernel ioctls."""
