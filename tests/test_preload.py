"""rsgrpo.preload: a verb run by a forked worker of the preload server behaves as the same command
started fresh: same output files, streams, exit status and signals, same process state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from rsgrpo import preload

TESTS = Path(__file__).resolve().parent
# exit status 97: the server refused, and a real client would run the module itself
CLIENT = ("import sys; from rsgrpo.preload import run_via_server; "
          "code = run_via_server(sys.argv[1], 'preload_target', sys.argv[1:]); sys.exit(97 if code is None else code)")


def _env(**extra: str) -> dict[str, str]:
    # (PYTEST_CURRENT_TEST changes from test to test: tqdm's import reads every variable there is)
    env = {k: v for k, v in os.environ.items() if k not in preload.PER_JOB_VARIABLES and k != "PYTEST_CURRENT_TEST"}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])])
    return {**env, **extra}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("preload") / "socket")
    proc = subprocess.Popen([sys.executable, "-m", "rsgrpo.preload", "--serve", path],
                            env={**_env(), **preload.SERVER_THREADS})
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield path
    proc.terminate()
    proc.wait(timeout=30)


def _client(server, mode, out, *args, env=None, **popen):
    """``python -m preload_target mode out args`` through the server, in a subprocess of its own."""
    return subprocess.Popen([sys.executable, "-c", CLIENT, server, mode, str(out), *map(str, args)],
                            env=env or _env(OMP_NUM_THREADS="2"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def _wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_the_worker_sees_the_clients_argv_cwd_environment_and_a_fresh_process_state(server, tmp_path):
    fresh = subprocess.run([sys.executable, "-m", "preload_target", "info", tmp_path / "fresh.json"],
                           env=_env(OMP_NUM_THREADS="2"), capture_output=True, text=True, check=True)
    seen = []
    for i in range(2):
        proc = _client(server, "info", tmp_path / f"w{i}.json", cwd=tmp_path)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert (out, err) == ("stdout of info\n", "stderr of info\n")  # the client's own streams
        seen.append(json.loads((tmp_path / f"w{i}.json").read_text()))
    ref = json.loads((tmp_path / "fresh.json").read_text())
    assert fresh.stdout == "stdout of info\n"
    for i, got in enumerate(seen):
        assert got["argv"][1:] == ["info", str(tmp_path / f"w{i}.json")]
        assert got["argv"][0].endswith("preload_target.py")
        assert got["cwd"] == str(tmp_path)
        # its own process group (the supervisor kills it whole); the socket is not passed on
        assert got["pgid"] == got["pid"] and got["socket"] is None
        # Snakemake's per-job thread count and Python's signal handlers
        assert got["threads"] == ref["threads"] == 2
        assert (got["sigint"], got["sigterm"]) == (ref["sigint"], ref["sigterm"])
    # the global generators are seeded from the OS per worker, as a fresh process's imports seed them
    for generator in ("torch_draw", "numpy_draw", "python_draw"):
        assert seen[0][generator] != seen[1][generator] != ref[generator]
    assert seen[0]["pid"] != seen[1]["pid"]


def test_a_variable_the_imports_read_must_be_the_servers_others_reach_the_worker(server, tmp_path):
    # HF_HUB_DISABLE_TELEMETRY: huggingface_hub reads it when imported; a native library's TORCH_*
    # the server cannot see read
    for name in ("HF_HUB_DISABLE_TELEMETRY", "TORCH_SHOW_CPP_STACKTRACES"):
        proc = _client(server, "info", tmp_path / "x.json", env=_env(**{name: "1"}))
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 97, err
        assert f"its environment differs from the server's in {name}" in err
        assert not (tmp_path / "x.json").exists()
    # a variable no import read (the workflow's own, Snakemake's per-job ones) is the worker's
    proc = _client(server, "info", tmp_path / "y.json", env=_env(PRELOAD_TEST_MARKER="set later", TMPDIR=str(tmp_path)))
    assert proc.wait(timeout=60) == 0
    assert json.loads((tmp_path / "y.json").read_text())["marker"] == "set later"
    read = frozenset({"HF_HOME", "SET_BY_AN_IMPORT"})
    before, client = {"A": "1", "HF_HOME": "x"}, {"A": "2", "HF_HOME": "y", "OMP_PLACES": "c", "SET_BY_AN_IMPORT": "1"}
    assert preload.env_difference(before, client, read, {"SET_BY_AN_IMPORT": "1"}) == ["HF_HOME", "OMP_PLACES"]
    assert preload.env_difference(before, client, read) == ["HF_HOME", "OMP_PLACES", "SET_BY_AN_IMPORT"]


def test_exit_codes_exceptions_and_deaths_by_signal_reach_the_client(server, tmp_path):
    proc = _client(server, "exit", tmp_path / "a.json", 3)
    assert proc.wait(timeout=60) == 3
    proc = _client(server, "raise", tmp_path / "b.json")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "Traceback" in err and "ValueError: a failing verb" in err
    proc = _client(server, "die", tmp_path / "c.json")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_stop_signals_of_the_client_reach_the_verb(server, tmp_path, signum):
    out = tmp_path / "t.json"
    proc = _client(server, "wait-for-term", out)
    _wait_for(Path(f"{out}.waiting"))
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == 143
    assert Path(f"{out}.stopped").read_text() == signal.Signals(signum).name


def test_a_killed_client_takes_its_worker_along(server, tmp_path):
    out = tmp_path / "k.json"
    proc = _client(server, "wait-for-term", out)
    _wait_for(Path(f"{out}.waiting"))
    worker = json.loads(out.read_text())["pid"]
    proc.kill()
    proc.wait(timeout=60)
    _wait_for(Path(f"{out}.stopped"))  # SIGTERM first, so a train job can checkpoint
    assert Path(f"{out}.stopped").read_text() == "SIGTERM"
    deadline = time.monotonic() + 30
    while Path(f"/proc/{worker}").exists() and "Z" not in Path(f"/proc/{worker}/stat").read_text().split()[2]:
        assert time.monotonic() < deadline, "the worker outlived its client"
        time.sleep(0.05)


def test_sample_through_the_server_equals_sample_started_fresh(server, tiny_model_dir, tmp_path):
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"{i}+{i}=", "answer": str(2 * i)}) + "\n"
                             for i in range(3)))
    frames = {}
    for how, extra in (("fresh", {}), ("preloaded", {preload.SOCKET_VARIABLE: server})):
        out = tmp_path / how / "samples.parquet"
        done = subprocess.run([sys.executable, "-m", "rsgrpo", "sample", "--model", str(tiny_model_dir),
                               "--benchmark", str(bench), "--out", str(out), "--n", "6", "--max-tokens", "10",
                               "--seed", "5", "--engine", "hf", "--temperature", "1.0", "--top-p", "0.9"],
                              env=_env(OMP_NUM_THREADS="1", **extra), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "running here" not in done.stderr
        frames[how] = pd.read_parquet(out)
    assert len(frames["fresh"]) == 18
    pd.testing.assert_frame_equal(frames["fresh"], frames["preloaded"])


def test_the_wrapper_runs_its_command_with_a_server_and_cleans_up(tmp_path):
    script = ("import os, sys; path = os.environ['RSGRPO_PRELOAD_SOCKET']; print(path); "
              "sys.exit(4 if os.path.exists(path) else 9)")
    done = subprocess.run([sys.executable, "-m", "rsgrpo.preload", "--", sys.executable, "-c", script],
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 4, done.stderr[-3000:]
    path = Path(done.stdout.strip())
    assert path.name == "socket" and not path.parent.exists()
    done = subprocess.run([sys.executable, "-m", "rsgrpo.preload"], env=_env(), capture_output=True, text=True)
    assert done.returncode == 2 and "usage: python -m rsgrpo.preload -- COMMAND" in done.stderr
