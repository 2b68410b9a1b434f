"""Every model and dataset spec of a workflow config, checked against the registries when the config
loads (workflow/rules/common.smk), before any job runs.

Why here and not in the JSON schema: sources and generators are registries that other modules add to
(:data:`rsgrpo.prepare.model_sources.MODEL_SOURCES`, :data:`rsgrpo.prepare.data_sources.DATA_SOURCES`,
:data:`rsgrpo.prepare.generators.GENERATORS`); an enum in the schema would refuse what a user
registered. A model spec is checked whole (its source's required and allowed keys).
"""

from __future__ import annotations

from rsgrpo.grid import ConfigError
from rsgrpo.prepare.data_sources import data_source
from rsgrpo.prepare.generators import generator
from rsgrpo.prepare.model_sources import parse_model_spec

__all__ = ["check_config_specs", "check_dataset_spec"]


def check_dataset_spec(spec: dict) -> None:
    """ValueError for a dataset spec whose source (or generator) is not registered: the lookups that
    load_records makes when the data is prepared."""
    data_source(spec.get("source"))
    if spec.get("source") == "generator":
        generator(spec.get("name"))


def check_config_specs(config: dict, source: str = "config") -> None:
    """ConfigError naming ``source`` (the config files), the key and the problem."""
    checks = [(f"models.{key}.spec", parse_model_spec, model["spec"])
              for key, model in config.get("models", {}).items()]
    checks += [(f"train_sets.{key}", check_dataset_spec, spec) for key, spec in config.get("train_sets", {}).items()]
    checks += [(f"benchmarks.{key}.spec", check_dataset_spec, bench["spec"])
               for key, bench in config.get("benchmarks", {}).items()]
    for key, check, spec in checks:
        try:
            check(spec)
        except ValueError as exc:
            raise ConfigError(f"{source}: {key}: {exc}") from None
