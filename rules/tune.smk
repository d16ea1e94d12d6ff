# Optional hyperparameter search (tuning.enabled): one Optuna study per model and outer fold,
# on inner patient folds of that fold's training windows; train_fold then reads the result.


rule tune:
    input:
        unpack(tune_inputs),
    output:
        params=TUNED_PARAMS,
    params:
        training=config["training"],
        model=lambda wc: config["models"][wc.model],
        tuning=config["tuning"],
        # The study is not an output: Snakemake would delete it before a re-run, and a
        # killed search resumes from it.
        study_db=lambda wc: tuning_study(wc.model, wc.fold),
        work_dir=lambda wc: checkpoint_dir(f"tune_{wc.model}_fold{wc.fold}"),
        status=STATUS,
    threads: config["compute"]["train_threads"]
    resources:
        gpu=min(gpus_per_job(), 1),  # trials train in one process
    conda:
        "../envs/train.yaml"
    log:
        "logs/tune/{model}_fold{fold}.log",
    script:
        "../workflow_scripts/tune.py"


rule tuning:
    input:
        all_tuned_params(),
