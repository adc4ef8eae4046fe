# Shared wildcard constraints and helpers for every stage.


wildcard_constraints:
    dataset=r"[A-Za-z0-9_-]+",
    net=r"[A-Za-z0-9_]+",
    seed=r"\d+",


def train_threads():
    return config["resources"]["threads"]


# Every training rule declares its resources itself, so a --set-resources on the command line
# changes only what it names.  gpu: locally one job slot when CUDA is here (--resources gpu=N
# counts GPUs, the Snakefile makes them N x KDPIPE_JOBS_PER_GPU slots); on SLURM one GPU per job,
# none with KDPIPE_SLURM_GPUS=0 (a CPU partition), or with KDPIPE_SLURM_GPUS=shard:N / mps:N
# none and gres: that share of one GPU (unset otherwise).  mem_mb and runtime (minutes, sized
# for config/paper.yaml's 200 epochs) are what each job asks of SLURM; local runs ignore them.
# threads: resources.threads (CPUs per job).
TRAIN_GPUS, TRAIN_GRES = kw.training_gpu_request(config, SLURM)


wildcard_constraints:
    variant=r"[a-z]+(\+st)?(\+dot)?",
    sweep=kw.SWEEP_SEGMENT,
    teacher=r"[A-Za-z0-9_]+",
    student=r"[A-Za-z0-9_]+",
    crd=r"crd(\+st)?",
    cohort=r"[A-Za-z0-9_]+(-[A-Za-z0-9_]+)+",  # a DML cohort: its peers, '-'-joined
    chain=r"[A-Za-z0-9_]+(-[A-Za-z0-9_]+)?",  # a born-again chain: <net> or <teacher>-<student>
    gen=r"[1-9]\d*",


wildcard_constraints:
    group=r"[A-Za-z0-9_]+-[A-Za-z0-9_+]+",
