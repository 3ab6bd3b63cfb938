"""The layer merge: layer splitstreams to one tree (pure and native)."""
