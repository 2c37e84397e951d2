"""Models and their training: policy presets, SFT, GRPO math, evaluation; ``vae``: TinyVAE.

May import ``validator_actors`` and ``rollout``; never ``cluster`` or ``serve``.
"""
