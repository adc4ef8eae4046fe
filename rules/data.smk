# The dataset as a DAG node: its manifest (content hashes of the train/val/test splits, class
# names, split settings) is an input of every training rule, so changed data files re-run exactly
# the runs that read them.  A localrule: it may download CIFAR, which compute nodes often cannot.


localrules:
    data_manifest,


rule data_manifest:
    input:
        lambda w: kw.data_files(config, w.dataset),
    output:
        "results/{dataset}/data/manifest.json",
    log:
        "results/logs/{dataset}/data.log",
    conda:
        "../environment.yml"
    params:
        opts=lambda w: kw.data_options(config, w.dataset),
    script:
        "../scripts/data_manifest.py"
