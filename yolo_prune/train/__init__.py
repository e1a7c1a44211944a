"""Pruning inside the Ultralytics trainer."""
