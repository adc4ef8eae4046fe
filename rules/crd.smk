# Contrastive representation distillation students (crd, and crd+st with soft targets).


rule train_crd:
    input:
        unpack(
            lambda w: kw.student_inputs(
                config, "train_crd", w.dataset, "crd", w.teacher, w.seed
            )
        ),
    output:
        model="results/{dataset}/{crd}/{teacher}-{student}/seed{seed}/model.pt",
        metrics="results/{dataset}/{crd}/{teacher}-{student}/seed{seed}/metrics.csv",
        record="results/{dataset}/{crd}/{teacher}-{student}/seed{seed}/run.json",
    log:
        "results/logs/{dataset}/{crd}/{teacher}-{student}/seed{seed}.log",
    wildcard_constraints:
        crd=r"crd(\+st)?",
    conda:
        "../environment.yml"
    threads: train_threads()
    resources:
        gpu=TRAIN_GPUS,
        mem_mb=32000,
        runtime=960,
    params:
        opts=lambda w: kw.crd_options(
            config, w.dataset, w.crd, w.teacher, w.student, w.seed
        ),
    script:
        "../scripts/train_crd.py"
