from hms_core.export.onnx import export_model
from hms_core.workflow import rule_context

with rule_context(snakemake) as smk:
    export_model(list(smk.input.weights), smk.output.onnx, store_paths=list(smk.input.stores),
                 cfg=smk.params.export, parity_out=smk.output.parity, name=smk.wildcards.model)
