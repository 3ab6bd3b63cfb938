"""Fuzzers that stay: mutation- and generation-based, both backends, bounded in time."""
