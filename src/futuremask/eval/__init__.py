"""MileBench evaluation: data loading, prompts, the generation runner, official scoring and reports.

Submodules are imported on demand (``futuremask.eval.scoring``, ``futuremask.eval.report``, ...) so that
importing this package stays cheap and pulls in neither torch nor matplotlib.
"""
