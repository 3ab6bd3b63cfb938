"""Native backend module `tree` (see the pure twin ``composefs._pure.tree``)."""
