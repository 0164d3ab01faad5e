"""Finding good starting values for a fraction of a training run.

`lr_find` (the learning-rate range test), `batch_find` (gradient noise scale and memory fit),
`search` (hyperparameter search on Optuna) and `mup` (coordinate check and width transfer).
All of them drive the same step and loop as `steplab train`, with their own schedule or
callbacks; `cli` registers their commands.
"""
