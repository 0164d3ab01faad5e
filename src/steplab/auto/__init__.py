"""`steplab auto`: the best model for a corpus and a compute budget, chosen by experiment (see run.py)."""
