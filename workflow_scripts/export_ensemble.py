from hms_core.export.onnx import export_ensemble
from hms_core.workflow import data_dir, rule_context

with rule_context(snakemake) as smk:
    n_folds = smk.params.n_folds
    members = {m: smk.input.weights[i * n_folds:(i + 1) * n_folds] for i, m in enumerate(smk.params.models)}
    export_ensemble(members, smk.input.ensemble, None, smk.output.onnx,
                    preprocessing=smk.params.preprocessing, data_dir=data_dir(smk.input.source),
                    store_paths=list(smk.input.stores), cfg=smk.params.export,
                    parity_out=smk.output.parity)
