"""Model and dataset specs of a workflow config are checked against the registries when it loads."""

from pathlib import Path

import pytest
import yaml

from rsgrpo.grid import ConfigError
from rsgrpo.prepare import model_sources
from rsgrpo.prepare.config_specs import check_config_specs, check_dataset_spec

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["grid.yaml", "calibrate.yaml", "demo.yaml", "demo-llm.yaml", "gpu-smoke.yaml"])
def test_the_shipped_configs_pass(name):
    check_config_specs(yaml.safe_load((ROOT / "config" / name).read_text()), source=name)


def _config(model_spec=None, train_spec=None, bench_spec=None):
    return {"models": {"m": {"spec": model_spec or {"source": "tiny"}, "train_set": "t"}},
            "train_sets": {"t": train_spec or {"source": "generator", "name": "arithmetic"}},
            "benchmarks": {"b": {"spec": bench_spec or {"source": "local", "path": "b.jsonl"}, "n": 4, "ks": [1]}}}


@pytest.mark.parametrize("config, message", [
    (_config(model_spec={"source": "hf_hub", "id": "x"}),
     r"^my.yaml: models\.m\.spec: spec\.source must be one of the registered model sources \['hub', "),
    (_config(model_spec={"source": "tiny", "hidden": 64}),
     r"^my.yaml: models\.m\.spec: spec: unknown key\(s\) \['hidden'\] for source 'tiny'"),
    (_config(model_spec={"source": "hub"}), r"^my.yaml: models\.m\.spec: spec\.id is required for source 'hub'"),
    (_config(train_spec={"source": "hub", "path": "x"}),
     r"^my.yaml: train_sets\.t: unknown dataset source 'hub'; allowed sources: hf, local, generator$"),
    (_config(bench_spec={"source": "generator", "name": "algebra"}),
     r"^my.yaml: benchmarks\.b\.spec: unknown generator 'algebra'; known generators: arithmetic, carry_addition$"),
])
def test_an_unknown_source_or_key_names_the_file_key_and_value(config, message):
    with pytest.raises(ConfigError, match=message):
        check_config_specs(config, source="my.yaml")


def test_a_source_registered_by_the_users_module_passes():
    @model_sources.register("test_config_specs_source", required=("where",))
    def build(spec, tmp):
        pass

    try:
        check_config_specs(_config(model_spec={"source": "test_config_specs_source", "where": "x"}))
        with pytest.raises(ConfigError, match="spec.where is required"):
            check_config_specs(_config(model_spec={"source": "test_config_specs_source"}))
    finally:
        model_sources.MODEL_SOURCES.pop("test_config_specs_source")
    check_dataset_spec({"source": "generator", "name": "carry_addition"})
