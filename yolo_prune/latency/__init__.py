"""Latency-aware pruning: the plan of a latency table (plan.py), its per-site graphs (sitegraph.py), format, fit and
prediction (lut.py), and the budget's latency cost model (cost.py); the measuring is bench/profile.py."""
