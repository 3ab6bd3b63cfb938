"""Kernel mounts and a local registry (root, external tools)."""
