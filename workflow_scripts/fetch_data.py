from hms_core.data.source import resolve_data
from hms_core.workflow import rule_context

with rule_context(snakemake) as smk:
    resolve_data(smk.params.data, source_out=smk.output.source)
