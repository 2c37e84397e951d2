"""Data and environment: intent generator, tokenizer, rule-based baseline, gym envs, sampler.

May import ``validator_actors``; never ``learner``, ``cluster`` or ``serve``.
"""
