"""Native backend module `erofs` (see the pure twin ``composefs._pure.erofs``)."""
