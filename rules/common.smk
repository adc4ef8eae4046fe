# Shared wildcard constraints and helpers for every stage.


wildcard_constraints:
    dataset=r"[A-Za-z0-9_-]+",
    net=r"[A-Za-z0-9_]+",
    seed=r"\d+",


def train_threads():
    return config["resources"]["threads"]
