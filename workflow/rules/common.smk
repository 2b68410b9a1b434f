# Loads and validates the config (JSON schema; fills documented defaults) and holds shared patterns.
from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

RESULTS = "results"
LOGS = "logs"


def space_separated(values):
    """Format a list for a shell command line (betas etc.)."""
    return " ".join(str(v) for v in values)

# Every rule runs in this environment under --software-deployment-method conda (see the file).
RSGRPO_ENV = "../envs/rsgrpo.yaml"
