"""steplab: make every training step of a language model count.

The Python API mirrors the CLI::

    from steplab.presets import get_preset
    from steplab.loop.fit import train

    cfg = get_preset("default")
    cfg.train.max_steps = 200
    result = train(cfg, run_dir="runs/api")

Importing `steplab` loads nothing heavy; each module imports what it needs.
"""

__version__ = "0.1.0"
