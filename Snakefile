# hms: raw HMS files -> validated data -> per-batch Zarr windows -> foundation encoder
#      -> per-model, per-fold weights + out-of-fold predictions -> ensemble -> ONNX -> results
from snakemake.utils import min_version, validate

from hms_core.config import coerce_config
from hms_core.config.sections import check_config

min_version("9.0")


configfile: f"{workflow.basedir}/config/config.yaml"


# --config hands nested values over as strings; then every section is built once, so any
# config error (a bad option, a range) stops `snakemake -n` before the first job.
coerce_config(config)
validate(config, schema="config/schema.yaml")
check_config(config)


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/preprocess.smk"
include: "rules/pretrain.smk"
include: "rules/tune.smk"
include: "rules/train.smk"
include: "rules/ensemble.smk"
include: "rules/export.smk"
include: "rules/report.smk"


# Cheap steps, or ones that need the internet (the Kaggle download), stay on the head node
# when an executor plugin (SLURM, ...) sends the rest to the cluster.
localrules:
    all,
    fetch_data,
    results,
    report_figures,


# Every artifact is a target of `all`, so deleting any one of them (a fold's weights, say)
# makes the next run rebuild it and what depends on it; nothing else.
rule all:
    default_target: True
    input:
        rules.validate_data.output,
        rules.make_folds.output,
        all_stores(),
        all_tuned_params(),
        all_weights(),
        all_oofs(),
        rules.ensemble.output,
        expand("models/onnx/{model}.onnx", model=enabled_models()),
        rules.export_ensemble.output,
        rules.results.output.results,
        rules.report_figures.output.figures,
        foundation_targets(),


onstart:
    from hms_core.ops import lifecycle

    lifecycle.on_start(".", config["ops"])


onsuccess:
    from hms_core import tracking
    from hms_core.ops import lifecycle

    lifecycle.on_end(".", config["ops"], state="finished")
    tracking.finish_workflow(config.get("tracking"))
    print_summary()


onerror:
    from hms_core import tracking
    from hms_core.ops import lifecycle

    lifecycle.on_end(".", config["ops"], state="failed")
    tracking.finish_workflow(config.get("tracking"), failed=True)
