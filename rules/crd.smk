# Contrastive representation distillation students (crd, and crd+st with soft targets).


rule train_crd:
    input:
        unpack(lambda w: kw.seed_inputs(config, "train_crd", w)),
    output:
        model="results/{dataset}/{crd}/{teacher}-{student}/seed{seed}/model.pt",
        metrics="results/{dataset}/{crd}/{teacher}-{student}/seed{seed}/metrics.csv",
        record="results/{dataset}/{crd}/{teacher}-{student}/seed{seed}/run.json",
    log:
        "results/logs/{dataset}/{crd}/{teacher}-{student}/seed{seed}.log",
    conda:
        "../environment.yml"
    threads: train_threads()
    resources:
        gpu=TRAIN_GPUS,
        gres=TRAIN_GRES,
        mem_mb=32000,
        runtime=kw.rule_runtime("train_crd"),
    params:
        opts=lambda w: kw.seed_options(config, "train_crd", w),
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
        opts=lambda w: kw.seed_options(config, "train_crd_sweep", w),
