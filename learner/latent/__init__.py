"""Latent context compression: a Perceiver-style compressor turns a long request history into
K latent vectors that a tiny reasoner (the policy architecture) reads through ``inputs_embeds``,
measured against truncation, pooling and retrieval at the same budget (docs/LATENT.md).

``data`` writes the request histories, ``model`` holds the compressor and the context views,
``train`` trains and evaluates one arm, ``study`` runs the grid, ``cli`` is
``tinycompress latent``.
"""
