"""Scores and selection over a recorded history: the METHODS table, the geometry methods,
kNN, dedup and the plan that get_coreset.py and report.py share."""
