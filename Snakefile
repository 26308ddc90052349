# geopeft: parameter-efficient fine-tuning of vision / geospatial foundation models on Sentinel-2.
# Default study: config/config.yaml (embedded synthetic world). Real studies: config/studies/.
from snakemake.utils import min_version

min_version("9.0")


# The layering rule: a study file given with --configfile, plus the schema's defaults, is the
# whole study; config/config.yaml (the default study) is read only when none is given.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/paper.smk"


rule all:
    input:
        get_final_outputs(),
    default_target: True
