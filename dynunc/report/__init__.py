"""The decision report (report.py): accuracies, figures, statistics and the page."""
