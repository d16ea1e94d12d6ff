from hms_core.contract import group_by_model
from hms_core.export.onnx import export_ensemble
from hms_core.workflow import data_dir, rule_context

with rule_context(snakemake) as smk:
    export_ensemble(group_by_model(smk.input.weights), smk.input.ensemble, None, smk.output.onnx,
                    preprocessing=smk.params.preprocessing, data_dir=data_dir(smk.input.source),
                    store_paths=list(smk.input.stores), cfg=smk.params.export,
                    parity_out=smk.output.parity)
