# Shared wildcard constraints and helpers for every stage.


wildcard_constraints:
    dataset=r"[A-Za-z0-9_-]+",
    net=r"[A-Za-z0-9_]+",
    seed=r"\d+",


def train_threads():
    return config["resources"]["threads"]


# Every training rule declares its resources itself, so a --set-resources on the command line
# changes only what it names.  gpu: locally one GPU slot when CUDA is here (--resources gpu=N
# bounds the jobs in flight); on SLURM one GPU per job unless KDPIPE_SLURM_GPUS=0 (a CPU
# partition).  mem_mb and runtime (minutes, sized for config/paper.yaml's 200 epochs) are what
# each job asks of SLURM; local runs ignore them.  threads: resources.threads (CPUs per job).
TRAIN_GPUS = kw.gpus_per_training_job(config, SLURM)


wildcard_constraints:
    variant=r"[a-z]+(\+st)?(\+dot)?",
    sweep=kw.SWEEP_SEGMENT,
    teacher=r"[A-Za-z0-9_]+",
    student=r"[A-Za-z0-9_]+",


wildcard_constraints:
    group=r"[A-Za-z0-9_]+-[A-Za-z0-9_+]+",
