"""Tools built on the loop: lr-find, batch-find, muP, tune, compare, export, doctor."""
