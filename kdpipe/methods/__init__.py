"""Entry points: one module per training method."""
