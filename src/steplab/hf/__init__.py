"""Hugging Face transformers checkpoints <-> steplab's model.

One table of the transformers classes steplab's model can be written as and read from
(`families`), one parameter-name mapping used in both directions (`weights`), and the
reading of a local pretrained directory for ``--init-from`` (`pretrained`). `steplab export`
(`steplab.tools.export`) writes through the same table and mapping, so a model imported
and exported again is the same transformers class with the same weights.
"""
