# Aggregation of finished runs into results/summary.csv.


localrules:
    summary,


rule summary:
    input:
        records=[f"{run}/run.json" for run in kw.run_targets(config)],
    output:
        "results/summary.csv",
    log:
        "results/logs/summary.log",
    params:
        teachers=kw.teacher_nets(config),
        dataset_names=kw.dataset_names(config),
    script:
        "../scripts/summary.py"
