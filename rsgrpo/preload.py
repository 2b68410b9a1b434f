"""Start ``python -m rsgrpo`` verbs without paying for their imports again and again.

``python -m rsgrpo.preload -- snakemake all ...`` runs the command given after ``--`` next to a
server process that has imported the verbs' libraries (torch, transformers, DeepSpeed, pandas,
math-verify, matplotlib) once. Every ``python -m rsgrpo <verb>`` the command starts finds the server
through ``RSGRPO_PRELOAD_SOCKET`` and has it fork a worker that runs the verb, so a job of a second
of work no longer spends seconds importing. On a small CPU machine that import time is most of what
a workflow of tiny jobs costs (``make demo``); a job on a GPU cluster imports once per hour of work
and has no use for it, and CUDA must never be initialised before a fork, so SLURM profiles do not
use it.

Each verb still runs in a process of its own, as a fresh ``python -m rsgrpo`` would:

* its standard input, output and error are the client's own file descriptors (passed over the Unix
  socket), so a rule's ``> {log} 2>&1`` and a terminal's progress bars work unchanged;
* it gets the client's argv, working directory and environment. A variable that differs from the
  server's may have changed what an import did: one the imports read (the server records every read
  of ``os.environ`` while it imports) or one native libraries read when they load
  (:data:`NATIVE_PREFIXES`) makes the client run the verb itself, as it does when no server answers.
  Snakemake's per-job thread counts are applied with ``torch.set_num_threads``;
* it starts from the state a fresh process has: signal handlers as Python sets them, the global
  generators of torch, NumPy and Python reseeded from the OS;
* its exit status is the client's: an exit code, or death by the same signal; the client passes
  the stop signals it gets (SIGTERM, SIGINT, SIGUSR1, ...) on to it, and a client that dies has its
  worker's process group killed;
* the processes a verb starts itself (torchrun's ranks, grading pools) are started as usual, never
  by the server: the worker's environment has no ``RSGRPO_PRELOAD_SOCKET``.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence

SOCKET_VARIABLE = "RSGRPO_PRELOAD_SOCKET"
# What Snakemake sets per job (thread counts, its temporary folder) and the shell's own bookkeeping:
# they may differ from the server's. The worker applies the thread counts and forgets the temporary
# folder tempfile found at import.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
                    "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")
PER_JOB_VARIABLES = frozenset({*THREAD_VARIABLES, "TMPDIR", "TMP", "TEMP", "TEMPDIR", "SHLVL", "_", "PWD",
                               "OLDPWD", SOCKET_VARIABLE})
# Read by native code (getenv) when a library loads, where the server cannot see the reads; tqdm's
# import scans the environment for TQDM_* (a scan records only the variables present then).
NATIVE_PREFIXES = ("OMP_", "KMP_", "GOMP_", "MKL_", "OPENBLAS_", "GOTO_", "LD_", "MALLOC_", "PYTHON", "TORCH_",
                   "PYTORCH_", "CUDA", "NCCL_", "ARROW_", "JEMALLOC", "TQDM_")
# NumPy's OpenBLAS starts its threads when it is loaded, sized by these: the server loads it with
# one, so no thread runs in it when it forks (torch's pools start at first use, in the worker).
SERVER_THREADS = {"OPENBLAS_NUM_THREADS": "1", "GOTO_NUM_THREADS": "1"}
# Libraries first, then every verb's module. The verbs import most libraries inside their functions,
# and transformers, torch and DeepSpeed load much of themselves lazily: this is what a sample, score
# and train job of the demo imports (python -X importtime) beyond the verb modules' own imports.
PRELOAD = ("torch", "numpy.random", "pandas", "pyarrow.parquet", "pyarrow.dataset", "pyarrow.pandas_compat",
           "transformers", "transformers.modeling_utils", "transformers.generation",
           "transformers.models.auto.modeling_auto", "transformers.models.auto.tokenization_auto",
           "transformers.models.qwen2.modeling_qwen2", "accelerate", "torch._dynamo", "torch.distributed.fsdp",
           "torch.distributed.tensor", "torch.utils.tensorboard", "deepspeed", "deepspeed.runtime.engine",
           "deepspeed.runtime.zero", "deepspeed.module_inject", "deepspeed.ops.op_builder", "math_verify",
           "matplotlib.pyplot", "tqdm", "multiprocessing.synchronize")
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                     signal.SIGUSR2)
# A worker whose client died gets SIGTERM (a train job then checkpoints), then SIGKILL after this long.
KILL_GRACE_SECONDS = 30.0
_LENGTH = struct.Struct("!Q")


# ------------------------------------------------------------------------------------------------
# the client: ``python -m rsgrpo`` with RSGRPO_PRELOAD_SOCKET set
# ------------------------------------------------------------------------------------------------
def run_via_server(path: str, module: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> int | None:
    """Run ``python -m module`` with ``argv`` (``sys.argv``) in a worker of the server at ``path``
    and return its exit code, or die by the signal that killed it. None when no server answers or
    it refuses (the caller then runs the module itself)."""
    env = dict(os.environ if env is None else env)
    env.pop(SOCKET_VARIABLE, None)
    request = json.dumps({"module": module, "argv": list(argv), "cwd": os.getcwd(), "env": env}).encode()
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)
        socket.send_fds(conn, [_LENGTH.pack(len(request))], [0, 1, 2])
        conn.sendall(request)
    except OSError:
        return None
    reader = conn.makefile("r")
    reply = _reply(reader)
    if reply is None or "refused" in reply:
        if reply:
            print(f"rsgrpo.preload: running here, not in the server: {reply['refused']}", file=sys.stderr)
        return None
    pid = int(reply["pid"])

    def forward(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)
    reply = _reply(reader)
    if reply is None:
        print("rsgrpo.preload: the server went away before the worker's exit status came", file=sys.stderr)
        return 1
    status = int(reply["status"])
    if os.WIFSIGNALED(status):  # die as the worker died, so the caller sees what a fresh process gives
        signum = os.WTERMSIG(status)
        if signum not in (signal.SIGKILL, signal.SIGSTOP):  # (those two cannot be handled)
            signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    return os.waitstatus_to_exitcode(status)


def _reply(reader) -> dict | None:
    line = reader.readline()
    return json.loads(line) if line else None


# ------------------------------------------------------------------------------------------------
# the server
# ------------------------------------------------------------------------------------------------
def serve(path: str, modules: Sequence[str] = PRELOAD) -> None:
    """Import ``modules`` and every verb's module, then fork a supervisor per connection at ``path``
    (never returns). The socket exists from the start, so a client that connects during the imports
    waits for them rather than importing everything itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the command; its end ends the server
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(128)
    started_with = {k: v for k, v in os.environ.items() if k not in SERVER_THREADS}
    from rsgrpo.cli import VERBS, verb_module

    read = _reads_of_environment(lambda: [importlib.import_module(n) for n in [*modules, *map(verb_module, VERBS)]])
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # a CUDA context cannot survive a fork
        raise SystemExit("rsgrpo.preload: CUDA was initialised while importing; not serving")
    sys.stdout.flush()
    sys.stderr.flush()
    # what the imports set in the environment (a fresh process's imports would set it too)
    imports_set = {k: v for k, v in os.environ.items() if k not in SERVER_THREADS and started_with.get(k) != v}
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
    while True:
        try:
            conn, _ = listener.accept()
        except InterruptedError:
            continue
        if os.fork() == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            try:
                _supervise(conn, started_with, imports_set, read)
            except Exception as exc:  # a malformed request or a client gone early: the server goes on
                print(f"rsgrpo.preload: a request failed: {exc!r}", file=sys.stderr, flush=True)
            finally:
                os._exit(0)
        conn.close()


def _reads_of_environment(run) -> frozenset[str]:
    """Run ``run()`` and return the names it looked up in ``os.environ`` (``get``, ``in``, ``[]``,
    ``getenv`` and copies all go through ``__getitem__``), present or not."""
    environ_class = type(os.environ)
    original, names = environ_class.__getitem__, set()

    def recording(self, key):
        names.add(key)
        return original(self, key)

    environ_class.__getitem__ = recording
    try:
        run()
    finally:
        environ_class.__getitem__ = original
    return frozenset(names)


def env_difference(before: Mapping[str, str], client: Mapping[str, str], read: frozenset[str],
                   imports_set: Mapping[str, str] | None = None) -> list[str]:
    """The variables whose values differ from the server's ``before`` its imports and which the imports
    may have used: read by them (``read``) or by native libraries (:data:`NATIVE_PREFIXES`); never
    :data:`PER_JOB_VARIABLES`, nor one the client has at the value the imports set it to."""
    imports_set = imports_set or {}
    keys = (set(before) | set(client)) - PER_JOB_VARIABLES
    return sorted(k for k in keys if before.get(k) != client.get(k) and (k in read or k.startswith(NATIVE_PREFIXES))
                  and not (k in imports_set and imports_set[k] == client.get(k)))


def _receive(conn: socket.socket) -> tuple[dict, list[int]]:
    head, fds, _, _ = socket.recv_fds(conn, _LENGTH.size, 3)
    if len(head) != _LENGTH.size or len(fds) != 3:
        raise ConnectionError("a request without its length and three file descriptors")
    (length,), chunks = _LENGTH.unpack(head), []
    while length > 0:
        chunk = conn.recv(min(length, 1 << 20))
        if not chunk:
            raise ConnectionError("the request ended early")
        chunks.append(chunk)
        length -= len(chunk)
    return json.loads(b"".join(chunks)), fds


def _send(conn: socket.socket, message: dict) -> None:
    conn.sendall((json.dumps(message) + "\n").encode())


def _supervise(conn: socket.socket, started_with: Mapping[str, str], imports_set: Mapping[str, str],
               read: frozenset[str]) -> None:
    """One request: fork the worker, tell the client its pid, then its wait status; kill its process
    group if the client goes away first."""
    request, fds = _receive(conn)
    differ = env_difference(started_with, request["env"], read, imports_set)
    if differ:
        _send(conn, {"refused": f"its environment differs from the server's in {', '.join(differ)}"})
        return
    worker = os.fork()
    if worker == 0:
        conn.close()
        _run_worker(dict(request, env={**request["env"], **imports_set}), fds)
    for fd in fds:
        os.close(fd)
    _send(conn, {"pid": worker})
    exited = os.pidfd_open(worker)
    while True:
        ready, _, _ = select.select([conn, exited], [], [])
        if exited in ready:
            break
        try:
            gone = not conn.recv(1)
        except OSError:
            gone = True
        if gone:  # the client was killed: so goes its verb
            _kill_group(worker, exited)
            break
    _, status = os.waitpid(worker, 0)
    try:
        _send(conn, {"status": status})
    except OSError:
        pass


def _kill_group(worker: int, exited: int) -> None:
    for signum, wait in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(worker, signum)
        except ProcessLookupError:
            return
        if wait is None or select.select([exited], [], [], wait)[0]:
            return


def _run_worker(request: dict, fds: list[int]) -> None:
    """In the forked worker: become what ``python -m <module>`` started by the client would be, run
    it, and exit as the interpreter would (never returns)."""
    os.setpgid(0, 0)  # the verb and its children: one group for the supervisor to kill
    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as the interpreter sets it
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])
    tempfile.tempdir = None  # found again from this job's TMPDIR
    _fresh_process_state()
    code = 0
    try:
        import runpy

        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        code = _exit_code(stop.code)
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        _finish()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    _finish()
    os._exit(code)


def _exit_code(code) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _fresh_process_state() -> None:
    """What a fresh interpreter would have: this job's ``OMP_NUM_THREADS`` in torch (OpenMP read the
    server's when torch was loaded); torch's and NumPy's global generators reseeded from the OS, as a
    fresh import seeds them (Python's ``random`` reseeds itself after a fork)."""
    torch = sys.modules.get("torch")
    if torch is not None:
        threads = os.environ.get("OMP_NUM_THREADS", "")
        if threads.isdigit() and int(threads) > 0:
            torch.set_num_threads(int(threads))
        torch.seed()
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()


def _finish() -> None:
    """The interpreter's exit: wait for non-daemon threads, run atexit handlers, flush."""
    import atexit
    import threading

    try:
        threading._shutdown()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass


# ------------------------------------------------------------------------------------------------
# ``python -m rsgrpo.preload -- COMMAND ...``
# ------------------------------------------------------------------------------------------------
def run_command(command: Sequence[str]) -> int:
    """Run ``command`` with a server at hand; return its exit status. The server goes when it ends."""
    folder = tempfile.mkdtemp(prefix="rsgrpo-preload-")
    path = os.path.join(folder, "socket")
    server = subprocess.Popen([sys.executable, "-m", "rsgrpo.preload", "--serve", path],
                              env={**os.environ, **SERVER_THREADS}, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and server.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the command; wait for it
    try:
        return subprocess.call(list(command), env={**os.environ, SOCKET_VARIABLE: path},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    finally:
        signal.signal(signal.SIGINT, previous)
        server.terminate()
        server.wait()
        os.unlink(path) if os.path.exists(path) else None
        os.rmdir(folder)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 2 and argv[0] == "--serve":
        serve(argv[1])
    if not argv or argv[0] != "--" or len(argv) < 2:
        print("usage: python -m rsgrpo.preload -- COMMAND [ARG ...]", file=sys.stderr)
        return 2
    return run_command(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
