"""Splitstream files: writer and parser."""
