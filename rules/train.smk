# Main models: one job per model and fold; epoch checkpoints live outside the outputs.


rule train_fold:
    input:
        unpack(train_inputs),
    output:
        weights=WEIGHTS,
        oof=OOF,
    params:
        training=config["training"],
        model=lambda wc: config["models"][wc.model],
        checkpoint_dir=lambda wc: checkpoint_dir(f"train_{wc.model}_fold{wc.fold}"),
        status=STATUS,
    threads: config["compute"]["train_threads"]
    resources:
        gpu=gpus_per_job(),
    conda:
        "../envs/train.yaml"
    log:
        "logs/train_fold/{model}_fold{fold}.log",
    script:
        "../workflow_scripts/train_fold.py"


rule training:
    input:
        all_weights(),
