# Preprocessing: one Zarr store per batch of recordings, written whole or not at all.


rule preprocess_batch:
    input:
        source=rules.fetch_data.output.source,
        report=rules.validate_data.output.report,
    output:
        store=directory(STORE),
        quarantine="data/processed/batch_{batch}.quarantine.json",
    params:
        preprocessing=config["preprocessing"],
        status=STATUS,
    threads: config["compute"]["preprocess_threads"]
    conda:
        "../envs/preprocess.yaml"
    log:
        "logs/preprocess_batch/batch_{batch}.log",
    script:
        "../workflow_scripts/preprocess_batch.py"


rule preprocessing:
    input:
        all_stores(),
