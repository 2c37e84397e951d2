"""Wiring: the training controller, Ray actor placement and the ``tinycompress`` CLI.

May import every package below it (``validator_actors``, ``rollout``, ``learner``).
"""
