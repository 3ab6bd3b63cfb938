"""The ``composefs`` command line (repository commands)."""
