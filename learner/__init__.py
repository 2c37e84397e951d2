"""Models and their training: policy presets, GRPO math, TinyVAE.

May import ``validator_actors`` and ``rollout``; never ``cluster`` or ``serve``.
"""
