# Aggregation of finished runs: summary, comparison tables, plots, bar-chart races.
# All local, each with a log; they read only run outputs.


localrules:
    summary,
    tables,
    group_plots,
    cost_plot,
    race,
    sweep_tables,
    sweep_plot,


rule summary:
    input:
        records=kw.summary_inputs(config),
        recipes=kw.recipe_paths(config),
    output:
        report(
            "results/summary.csv",
            caption="report/summary.rst",
            category="Data",
        ),
    log:
        "results/logs/report/summary.log",
    conda:
        "../environment.yml"
    params:
        runs=[run.record() for run in kw.plan(config)],
        teachers=kw.teacher_nets(config),
    script:
        "../scripts/summary.py"


rule tables:
    input:
        "results/summary.csv",
    output:
        md=report(
            "results/tables/{dataset}.md",
            caption="report/table.rst",
            category="Tables",
            subcategory="{dataset}",
        ),
        csv="results/tables/{dataset}.csv",
        tex="results/tables/{dataset}.tex",
    log:
        "results/logs/report/tables-{dataset}.log",
    conda:
        "../environment.yml"
    params:
        published=config["report"]["published"],
    script:
        "../scripts/tables.py"


rule group_plots:
    input:
        "results/summary.csv",
    output:
        test_acc=report(
            "results/plots/{dataset}/{group}/test_acc.png",
            caption="report/test_acc.rst",
            category="Curves",
            subcategory="{dataset} {group}",
        ),
        loss=report(
            "results/plots/{dataset}/{group}/loss.png",
            caption="report/loss.rst",
            category="Curves",
            subcategory="{dataset} {group}",
        ),
        final=report(
            "results/plots/{dataset}/{group}/final.png",
            caption="report/final.rst",
            category="Final accuracy",
            subcategory="{dataset}",
        ),
    log:
        "results/logs/report/plots-{dataset}-{group}.log",
    conda:
        "../environment.yml"
    script:
        "../scripts/plots.py"


rule cost_plot:
    input:
        "results/summary.csv",
    output:
        report(
            "results/plots/{dataset}/cost.png",
            caption="report/cost.rst",
            category="Cost",
        ),
    log:
        "results/logs/report/cost-{dataset}.log",
    conda:
        "../environment.yml"
    script:
        "../scripts/plots.py"


rule race:
    input:
        "results/summary.csv",
    output:
        report(
            "results/race/{dataset}/{group}/{metric}.gif",
            caption="report/race.rst",
            category="Races",
            subcategory="{dataset} {group}",
        ),
    log:
        "results/logs/report/race-{dataset}-{group}-{metric}.log",
    wildcard_constraints:
        group=r"[^/]+",
        metric="|".join(kw.RACES),
    conda:
        "../environment.yml"
    params:
        steps_per_period=config["report"]["steps_per_period"],
        period_ms=config["report"]["period_ms"],
    script:
        "../scripts/race.py"


# kd.sweep (only when configured): per dataset the sweeps' tables, per (pair, mode, swept key) a plot of
# accuracy against the swept value with the value chosen on validation marked.
rule sweep_tables:
    input:
        "results/summary.csv",
    output:
        md=report(
            "results/tables/sweeps/{dataset}.md",
            caption="report/sweep_table.rst",
            category="Sweeps",
            subcategory="{dataset}",
        ),
        csv="results/tables/sweeps/{dataset}.csv",
    log:
        "results/logs/report/sweeps-{dataset}.log",
    conda:
        "../environment.yml"
    script:
        "../scripts/sweeps.py"


rule sweep_plot:
    input:
        "results/summary.csv",
    output:
        report(
            "results/plots/{dataset}/{group}/sweep-{mode}-{key}.png",
            caption="report/sweep.rst",
            category="Sweeps",
            subcategory="{dataset}",
        ),
    log:
        "results/logs/report/sweep-{dataset}-{group}-{mode}-{key}.log",
    wildcard_constraints:
        mode=r"[a-z]+",
        key=kw.SWEEP_KEY,
    conda:
        "../environment.yml"
    script:
        "../scripts/sweeps.py"
