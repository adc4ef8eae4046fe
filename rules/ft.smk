# Factor transfer: teacher -> paraphraser (one node per teacher) -> FT students.


rule ft_paraphraser:
    input:
        data=lambda w: kw.data_manifest_path(w.dataset),
        teacher="results/{dataset}/base/{teacher}/seed{seed}/model.pt",
    output:
        model="results/{dataset}/ft-paraphraser/{teacher}/seed{seed}/paraphraser.pt",
        metrics="results/{dataset}/ft-paraphraser/{teacher}/seed{seed}/metrics.csv",
        record="results/{dataset}/ft-paraphraser/{teacher}/seed{seed}/run.json",
    log:
        "results/logs/{dataset}/ft-paraphraser/{teacher}/seed{seed}.log",
    conda:
        "../environment.yml"
    threads: train_threads()
    resources:
        gpu=TRAIN_GPUS,
        gres=TRAIN_GRES,
        mem_mb=16000,
        runtime=kw.rule_runtime("ft_paraphraser"),
    params:
        opts=lambda w: kw.ft_paraphraser_options(config, w.dataset, w.teacher, w.seed),
    script:
        "../scripts/train_ft_paraphraser.py"


rule train_ft:
    input:
        unpack(lambda w: kw.seed_inputs(config, "train_ft", w)),
    output:
        model="results/{dataset}/ft/{teacher}-{student}/seed{seed}/model.pt",
        metrics="results/{dataset}/ft/{teacher}-{student}/seed{seed}/metrics.csv",
        record="results/{dataset}/ft/{teacher}-{student}/seed{seed}/run.json",
    log:
        "results/logs/{dataset}/ft/{teacher}-{student}/seed{seed}.log",
    conda:
        "../environment.yml"
    threads: train_threads()
    resources:
        gpu=TRAIN_GPUS,
        gres=TRAIN_GRES,
        mem_mb=32000,
        runtime=kw.rule_runtime("train_ft"),
    params:
        opts=lambda w: kw.seed_options(config, "train_ft", w),
    script:
        "../scripts/train_ft.py"


# ft.sweep: one node per swept value (or grid point) of the FT student, in <pair>/<key>~<value>/seed<s>;
# the paraphraser node is the plain run's (a sweep varies only what the student alone reads).
use rule train_ft as train_ft_sweep with:
    output:
        model="results/{dataset}/ft/{teacher}-{student}/{sweep}/seed{seed}/model.pt",
        metrics="results/{dataset}/ft/{teacher}-{student}/{sweep}/seed{seed}/metrics.csv",
        record="results/{dataset}/ft/{teacher}-{student}/{sweep}/seed{seed}/run.json",
    log:
        "results/logs/{dataset}/ft/{teacher}-{student}/{sweep}/seed{seed}.log",
    params:
        opts=lambda w: kw.seed_options(config, "train_ft_sweep", w),
