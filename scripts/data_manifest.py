"""Rule data_manifest: load the dataset as the runs will and record what it holds."""

from kdpipe.jobs import rule_logging, write_data_manifest

with rule_logging(snakemake) as logger:
    manifest = write_data_manifest(dict(snakemake.params.opts), snakemake.output[0])
    logger.info("%s: sha256 %s, sizes %s", manifest["name"], manifest["sha256"], manifest["sizes"])
