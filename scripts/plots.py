"""Rules group_plots and cost_plot: accuracy curves, loss curves, final accuracy, accuracy vs cost."""

from kdpipe.report import plots
from kdpipe.report.frame import load_curves, load_summary
from kdpipe.jobs import rule_logging

with rule_logging(snakemake):
    w, out = snakemake.wildcards, snakemake.output
    frame = load_summary(snakemake.input[0])
    if snakemake.rule == "cost_plot":
        plots.plot_cost(frame, w.dataset, out[0])
    else:
        curves = load_curves(frame[frame["dataset"] == w.dataset])
        plots.plot_curves(curves, frame, w.dataset, w.group, out.test_acc)
        plots.plot_losses(curves, frame, w.dataset, w.group, out.loss)
        plots.plot_final(frame, w.dataset, w.group, out.final)
