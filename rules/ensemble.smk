# Stacking ensemble with diversity selection, model averaging and temperature scaling.


rule ensemble:
    input:
        oofs=all_oofs(),
    output:
        ensemble="models/final/ensemble.pth",
        metrics="results/ensemble_metrics.json",
    params:
        ensemble=config["ensemble"],
        checkpoint_dir=checkpoint_dir("ensemble"),
        status=STATUS,
    threads: config["compute"]["train_threads"]
    conda:
        "../envs/train.yaml"
    log:
        "logs/ensemble/ensemble.log",
    script:
        "../workflow_scripts/ensemble.py"
