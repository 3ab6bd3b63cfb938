"""EROFS images: the writers (pure and native) and the reader."""
