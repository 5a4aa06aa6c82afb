"""The pruning engine, independent of any model family.

- ``methods``: the ten methods as data (criterion, regularizing pruner, needs sparse training/gradients).
- ``criteria``: Torch-Pruning importances and pruners, corrected where they are wrong.
- ``graph``: dependency graphs of a model's traced region, and its channel groups.
- ``analysis``: what may be pruned and why not (``check``).
- ``units``, ``planner``: removable units of channels, and GFLOPs predicted from layer shapes.
- ``engine``: :func:`prune_to_target`, step by step to a target speed-up.
- ``rules``: users' rules for their own module types (protect, prune_rule, rewrite, plugins).
"""
