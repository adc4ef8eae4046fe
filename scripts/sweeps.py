"""Rules sweep_tables and sweep_plot: the kd.sweep tables of a dataset, and accuracy against one swept key."""

from kdpipe.report import sweeps
from kdpipe.report.frame import load_summary
from kdpipe.jobs import rule_logging

with rule_logging(snakemake):
    w, out = snakemake.wildcards, snakemake.output
    frame = load_summary(snakemake.input[0])
    if snakemake.rule == "sweep_tables":
        sweeps.write_sweep_tables(frame, w.dataset, out.md, out.csv)
    else:
        sweeps.plot_sweep(frame, w.dataset, w.group, w.mode, w.key, out[0])
