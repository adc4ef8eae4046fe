"""Aggregation of finished runs: tables against published numbers, plots, bar-chart races."""
