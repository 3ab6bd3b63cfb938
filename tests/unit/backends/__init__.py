"""The two backends (native and pure Python) compared call by call."""
