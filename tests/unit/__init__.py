"""Unit tests, one folder per format or concept; cfsctl comparisons are marked interop."""
