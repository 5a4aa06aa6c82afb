"""Measuring models: params, GFLOPs and size (``counts``), and one report row per run stage (``stage``)."""
