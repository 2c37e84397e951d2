"""Ray Tune sweeps of the GRPO runs (``tinycompress tune``).

``space`` loads and checks sweep files (``tune_configs/sweep_*.yaml``), ``warm_start`` makes
the starting policies, ``trial`` runs one GRPO controller per trial inside its placement group,
``results`` writes the table and exports the best policy, ``cli`` wires them to Tune.
"""
