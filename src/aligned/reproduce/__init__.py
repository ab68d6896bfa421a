"""The reproduction report: every claim of the paper measured on real data, with a verdict.

``python -m aligned.reproduce`` (``__main__``) plans the runs of a scale (``workloads``), trains,
evaluates and times each one or reuses it (``runs``), groups them (``collected``), decides each
claim (``claims``) and writes the report with its figures (``report``).
"""
