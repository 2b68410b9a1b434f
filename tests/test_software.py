"""The software the workflow's jobs run with: conda environments chosen by the config (not by the
machine that builds them), and container recipes that pin what pyproject.toml pins."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from snakemake_helpers import REPO, copy_workflow, snakemake

ENVS = REPO / "workflow" / "envs"
CONTAINERS = REPO / "containers"
SIF = "containers/rsgrpo-gpu.sif"


def _pyproject_pins() -> dict[str, str]:
    """{package: version} of every `==` pin of pyproject.toml (dependencies and extras)."""
    text = (REPO / "pyproject.toml").read_text()
    pins = dict(re.findall(r'^\s*"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^"\s;]+)",', text, flags=re.M))
    pins.update(re.findall(r'^\w+ = \["([A-Za-z0-9_.\-]+)==([^"\s;]+)"\]$', text, flags=re.M))  # one-pin extras
    assert {"torch", "vllm", "transformers"} <= set(pins)
    return {name.lower(): version for name, version in pins.items()}


# ------------------------------------------------------------------------------------------------
# conda environments
# ------------------------------------------------------------------------------------------------
def _fake_bin(tmp_path: Path, *, nvidia_smi: bool) -> tuple[Path, Path]:
    """A bin folder whose `python` only records its arguments (and, if asked, an `nvidia-smi`)."""
    fake = tmp_path / ("bin-gpu" if nvidia_smi else "bin-cpu")
    fake.mkdir()
    calls = fake / "calls.txt"
    (fake / "python").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    if nvidia_smi:
        (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100'\n")
    for f in fake.iterdir():
        f.chmod(0o755)
    return fake, calls


@pytest.mark.parametrize("nvidia_smi", [False, True])
def test_post_deploy_installs_the_gpu_extra_for_gpu_jobs_only_whatever_the_build_host(tmp_path, nvidia_smi):
    """The GPU environment gets `rsgrpo[gpu]` on a machine without a GPU (a login node) as well as
    with one; the CPU environment never does, and takes torch's CPU build."""
    fake, calls = _fake_bin(tmp_path, nvidia_smi=nvidia_smi)
    torch_pin = f"torch=={_pyproject_pins()['torch']}"
    env = {"PATH": f"{fake}{os.pathsep}/usr/bin{os.pathsep}/bin", "RSGRPO_SOURCE": str(REPO), "HOME": str(tmp_path)}
    expected = {
        "rsgrpo-gpu": [f"-m pip install {REPO}[gpu]"],
        "rsgrpo": [f"-m pip install {torch_pin} --index-url https://download.pytorch.org/whl/cpu",
                   f"-m pip install {REPO}"],
    }
    for name, lines in expected.items():
        calls.unlink(missing_ok=True)
        proc = subprocess.run(["bash", str(ENVS / f"{name}.post-deploy.sh")], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert calls.read_text().splitlines() == lines, name


def test_post_deploy_names_the_missing_source(tmp_path):
    """Snakemake runs a copy of the script from its conda prefix: without RSGRPO_SOURCE (set by the
    workflow) it stops with a message instead of installing whatever lies two folders up."""
    fake, calls = _fake_bin(tmp_path, nvidia_smi=False)
    proc = subprocess.run(["bash", str(ENVS / "rsgrpo-gpu.post-deploy.sh")], capture_output=True, text=True,
                          env={"PATH": f"{fake}{os.pathsep}/usr/bin{os.pathsep}/bin"})
    assert proc.returncode != 0 and "RSGRPO_SOURCE" in proc.stderr and not calls.exists()


def test_environment_files_differ_only_in_name_and_comments():
    cpu, gpu = (yaml.safe_load((ENVS / f).read_text()) for f in ("rsgrpo.yaml", "rsgrpo-gpu.yaml"))
    assert (cpu.pop("name"), gpu.pop("name")) == ("rsgrpo", "rsgrpo-gpu")
    assert cpu == gpu and "python=3.11" in cpu["dependencies"]


FAKE_CONDA = """#!/bin/sh
# answers the questions snakemake asks before it lists environments; creates nothing
case "$1" in
  --version) echo "conda 24.11.3" ;;
  info) echo '{"envs_dirs": [], "root_prefix": "/none", "conda_prefix": "/none", "platform": "linux-64"}' ;;
  config) echo '{"get": {"channel_priority": "strict"}}' ;;
  *) echo "fake conda: $*" >&2; exit 1 ;;
esac
"""


def _listed_envs(workdir: Path, fake: Path, *args: str) -> set[str]:
    proc = snakemake(workdir, "--list-conda-envs", "--sdm", "conda", *args,
                     env={"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = proc.stdout.splitlines()
    start = rows.index("environment\tcontainer\tlocation")
    return {Path(r.split("\t")[0]).name for r in rows[start + 1:] if r.strip()}


def test_jobs_get_the_gpu_environment_exactly_when_the_config_gives_their_model_gpus(tmp_path):
    """The paper grid (every model has gpus >= 1): train and sample in rsgrpo-gpu.yaml, every other
    rule in rsgrpo.yaml; the demo (gpus 0): everything in rsgrpo.yaml. No GPU on this machine."""
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "conda").write_text(FAKE_CONDA)
    (fake / "conda").chmod(0o755)
    work = copy_workflow(tmp_path / "wf")
    assert _listed_envs(work, fake) == {"rsgrpo.yaml", "rsgrpo-gpu.yaml"}
    assert _listed_envs(work, fake, "--omit-from", "train", "sample") == {"rsgrpo.yaml"}
    assert _listed_envs(work, fake, "--configfile", "config/demo.yaml") == {"rsgrpo.yaml"}
    # only train and sample choose by the config; every other rule names the CPU environment
    rules = "".join(p.read_text() for p in sorted((REPO / "workflow" / "rules").glob("*.smk")))
    chosen = re.findall(r"^rule (\w+):(?:(?!^rule ).)*?^    conda:\n\s+(\w+)", rules, flags=re.M | re.S)
    assert {rule for rule, env in chosen if env == "software_env"} == {"train", "sample"}
    assert {env for rule, env in chosen if rule not in ("train", "sample")} == {"RSGRPO_ENV"}
    assert len(chosen) == len(re.findall(r"^rule \w+:", rules, flags=re.M))  # every rule names one


# ------------------------------------------------------------------------------------------------
# container recipes (building them needs a registry: checked statically)
# ------------------------------------------------------------------------------------------------
def _pip_installs(text: str) -> list[str]:
    """The arguments of every `pip install` of a recipe (line continuations joined)."""
    text = text.replace("\\\n", " ")
    return [m.group(1) for m in re.finditer(r"pip install ([^\n&]+)", text)]


@pytest.mark.parametrize("recipe", ["Dockerfile", "rsgrpo.def"])
def test_container_recipes_pin_exactly_what_pyproject_pins(recipe):
    text = (CONTAINERS / recipe).read_text()
    installs = _pip_installs(text)
    pinned = dict(re.findall(r"([A-Za-z0-9_.\-]+)==([0-9][^\s\"']*)", " ".join(installs)))
    pins = _pyproject_pins()
    assert {"torch", "vllm"} <= set(pinned), installs
    assert {name: pins.get(name.lower()) for name in pinned} == pinned
    assert any('"/opt/rsgrpo[gpu]"' in args for args in installs)  # the project, with its gpu extra


def test_container_recipes_share_their_base_and_copy_the_checkout():
    docker = (CONTAINERS / "Dockerfile").read_text()
    apptainer = (CONTAINERS / "rsgrpo.def").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", docker, flags=re.M).group(1)
    assert re.search(r"^From: (\S+)$", apptainer, flags=re.M).group(1) == base
    copied = {line.split()[0] for line in apptainer.split("%files\n")[1].split("\n\n")[0].splitlines()}
    copied_docker = {src for srcs in re.findall(r"^COPY (.+) \S+$", docker, flags=re.M) for src in srcs.split()}
    assert copied == copied_docker == {"pyproject.toml", "README.md", "rsgrpo", "Snakefile", "workflow", "config",
                                       "profiles"}
    assert all((REPO / src).exists() for src in copied)
    ignore = (CONTAINERS / "Dockerfile.dockerignore").read_text().splitlines()
    assert {line[1:] for line in ignore if line.startswith("!")} == copied  # the build context is the checkout


def test_the_workflow_runs_in_the_image_the_recipes_build():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert schema["properties"]["container"]["default"] == SIF
    assert f"apptainer build {SIF} containers/rsgrpo.def" in (CONTAINERS / "rsgrpo.def").read_text()
    assert f"apptainer build {SIF} docker-daemon://" in (CONTAINERS / "Dockerfile").read_text()
    assert re.search(r"^container: config\[\"container\"\]$", (REPO / "workflow" / "rules" / "common.smk").read_text(),
                     flags=re.M)
    assert "containers/*.sif" in (REPO / ".gitignore").read_text().splitlines()
