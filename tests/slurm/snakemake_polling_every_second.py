"""Snakemake as the SLURM tests run it: the pinned SLURM executor plugin, polling squeue every second.

The plugin lengthens the pause between two status checks by 10 s after every check that finds no job
finished (up to 180 s), which spares a production slurmctld; on the tests' own two-node cluster it
only makes the submitting process notice a finished job up to tens of seconds late. Everything else
(submission, the jobs, their retries) is the plugin's own.

    python tests/slurm/snakemake_polling_every_second.py --profile profiles/slurm ...
"""

import sys

import snakemake_executor_plugin_slurm as slurm
from snakemake.cli import main

POLL_SECONDS = 1.0

slurm.Executor.next_seconds_between_status_checks = property(lambda self: POLL_SECONDS, lambda self, value: None)

if __name__ == "__main__":
    sys.exit(main())
