# Self-supervised pretraining of the EEG foundation encoder and its transfer study.


rule pretrain:
    input:
        stores=all_stores(),
        folds=rules.make_folds.output.folds,  # pretrain.holdout_folds' windows are left out
        # published weights (a file or folder the user downloaded); none: random initialisation
        init_weights=lambda wildcards: config["pretrain"].get("init_weights") or [],
    output:
        encoder=FOUNDATION,
    params:
        pretrain=config["pretrain"],
        checkpoint_dir=checkpoint_dir("pretrain"),
        status=STATUS,
    threads: config["compute"]["train_threads"]
    resources:
        gpu=gpus_per_job(),
    conda:
        "../envs/train.yaml"
    log:
        "logs/pretrain/pretrain.log",
    script:
        "../workflow_scripts/pretrain.py"


rule foundation_transfer:
    input:
        stores=all_stores(),
        folds=rules.make_folds.output.folds,
        encoder=rules.pretrain.output.encoder,
    output:
        study="results/foundation_transfer.json",
    params:
        transfer=config["transfer"],
        pretrain=config["pretrain"],
        checkpoint_dir=checkpoint_dir("foundation_transfer"),
    threads: config["compute"]["train_threads"]
    resources:
        gpu=gpus_per_job(),
    conda:
        "../envs/train.yaml"
    log:
        "logs/foundation_transfer/foundation_transfer.log",
    script:
        "../workflow_scripts/foundation_transfer.py"


rule pretraining:
    input:
        rules.pretrain.output,
