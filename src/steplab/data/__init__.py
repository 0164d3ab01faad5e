"""Corpus -> tokens: reading (corpus), tokenizers, encoding, the token cache, batches.

The bundled corpus, Tiny Shakespeare, lives here too (tinyshakespeare.txt).
"""
