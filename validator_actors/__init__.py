"""The language and its judge: codebook, Symbolic IR, decoder, validator, reward.

Pure Python (no Ray needed) except ``pool``, which wraps the validator in Ray actors.
Nothing here imports from ``rollout``, ``learner``, ``cluster`` or ``serve``.
"""
