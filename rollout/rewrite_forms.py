"""The names of the rewrite forms and imitation spans (``rollout.rewrite``), without torch, so
that a run's config is checked before anything heavy is imported."""

REWRITE_FORMS = ("edit", "shortcut", "clauses")
IMITATION_SPANS = ("all", "to_part")
