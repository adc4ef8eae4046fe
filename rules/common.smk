# Shared wildcard constraints and helpers for every stage.


wildcard_constraints:
    dataset=r"[A-Za-z0-9_-]+",
    net=r"[A-Za-z0-9_]+",
    seed=r"\d+",


def train_threads():
    return config["resources"]["threads"]


TRAIN_GPUS = kw.gpus_per_training_job(config)


wildcard_constraints:
    variant=r"[a-z]+(\+st)?",
    teacher=r"[A-Za-z0-9_]+",
    student=r"[A-Za-z0-9_]+",


wildcard_constraints:
    group=r"[A-Za-z0-9_]+-[A-Za-z0-9_+]+",
