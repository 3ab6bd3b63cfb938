"""The composefs dumpfile format: writer and parser."""
