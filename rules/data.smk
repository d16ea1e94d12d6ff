# Data stage: fetch (synthetic, Kaggle or a local folder), validate, patient-grouped folds.


rule fetch_data:
    output:
        source=SOURCE,
    params:
        data=config["data"],
    conda:
        "../envs/data.yaml"
    log:
        "logs/fetch_data/fetch_data.log",
    script:
        "../workflow_scripts/fetch_data.py"


rule validate_data:
    input:
        source=rules.fetch_data.output.source,
    output:
        manifest="data/manifest.sha256",
        report="data/validation.json",
    params:
        validation=config["data"]["validation"],
        on_bad_recording=config["preprocessing"]["on_bad_recording"],
    conda:
        "../envs/data.yaml"
    threads: config["data"]["validation"]["threads"]
    log:
        "logs/validate_data/validate_data.log",
    script:
        "../workflow_scripts/validate_data.py"


rule make_folds:
    input:
        source=rules.fetch_data.output.source,
        report=rules.validate_data.output.report,
    output:
        folds="data/folds.csv",
    params:
        folds=config["folds"],
    conda:
        "../envs/data.yaml"
    log:
        "logs/make_folds/make_folds.log",
    script:
        "../workflow_scripts/make_folds.py"


rule data:
    input:
        rules.validate_data.output,
        rules.make_folds.output,
