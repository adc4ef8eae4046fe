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
        gres=TRAIN_GRES,
        mem_mb=32000,
        runtime=960,
    params:
        opts=lambda w: kw.crd_options(
            config, w.dataset, w.crd, w.teacher, w.student, w.seed
        ),
    script:
        "../scripts/train_crd.py"


# crd.sweep: one node per swept value (or grid point) of the plain crd run, in <pair>/<key>~<value>/seed<s>.
use rule train_crd as train_crd_sweep with:
    output:
        model="results/{dataset}/{crd}/{teacher}-{student}/{sweep}/seed{seed}/model.pt",
        metrics="results/{dataset}/{crd}/{teacher}-{student}/{sweep}/seed{seed}/metrics.csv",
        record="results/{dataset}/{crd}/{teacher}-{student}/{sweep}/seed{seed}/run.json",
    log:
        "results/logs/{dataset}/{crd}/{teacher}-{student}/{sweep}/seed{seed}.log",
    params:
        opts=lambda w: kw.crd_options(
            config,
            w.dataset,
            w.crd,
            w.teacher,
            w.student,
            w.seed,
            kw.sweep_point(config, w.crd, w.sweep, "crd"),
        ),
