"""OCI: references, platforms, layouts, ``oci pull`` and the ``oci`` commands."""
