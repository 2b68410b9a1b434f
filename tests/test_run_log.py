"""The train verb's run log: every attempt's output, its children's included, after a header."""

import datetime
import re
import subprocess
import sys
import textwrap

from rsgrpo.train.run_log import attempt_header

ATTEMPT = textwrap.dedent("""
    import subprocess, sys
    from rsgrpo.train.run_log import teed_into_run_log

    with teed_into_run_log(sys.argv[1]):
        print("to stdout", flush=True)
        print("to stderr", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-c", "import sys; print('from a child'); print('child err', file=sys.stderr)"])
    print("after the log closed", flush=True)
""")


def test_each_attempt_appends_its_header_and_everything_it_and_its_children_print(tmp_path):
    run = tmp_path / "runs" / "m" / "cell"  # created by the first attempt
    outputs = [subprocess.run([sys.executable, "-c", ATTEMPT, str(run)], capture_output=True, text=True, timeout=60)
               for _ in range(2)]
    log = (run / "train.log").read_text()
    attempts = re.split(r"^(?=== .* train job on )", log, flags=re.M)[1:]
    assert len(attempts) == 2 and "".join(attempts) == log
    for attempt, out in zip(attempts, outputs):
        assert out.returncode == 0, out.stderr
        for line in ("to stdout", "to stderr", "from a child", "child err"):
            assert line in attempt  # the log has both streams of the verb and of the processes it starts
        assert "after the log closed" not in attempt and "after the log closed" in out.stdout
        # the console keeps its own streams apart
        assert "to stdout" in out.stdout and "from a child" in out.stdout and "to stdout" not in out.stderr
        assert "to stderr" in out.stderr and "child err" in out.stderr


def test_the_header_names_the_time_and_host_as_date_Is_does():
    when = datetime.datetime(2026, 12, 5, 20, 7, 10, tzinfo=datetime.timezone.utc)
    assert attempt_header("n1", when) == "== 2026-12-05T20:07:10+00:00 train job on n1\n"


KEPT_COPY = textwrap.dedent("""
    import os, sys, threading
    from rsgrpo.train.run_log import teed_into_run_log

    with teed_into_run_log(sys.argv[1]):
        kept = os.dup(2)  # what torch.distributed's gloo init does: a copy of fd 2 for the rest of the process
        print("before the end", file=sys.stderr, flush=True)
        os.write(2, b"x" * 200000 + b"\\n")  # more than a pipe holds: the end marker may straddle two reads
    pumps = [t for t in threading.enumerate() if t.name.endswith("(_pump)")]
    print("pumps left:", len(pumps), flush=True)
    os.write(kept, b"after the end\\n")  # the pipe has no reader any more: an error, not a hang
""")


def test_a_copy_of_stderr_kept_by_a_library_does_not_hold_the_verb_back(tmp_path):
    """Without the end marker the stderr pump waits for an end of file that the kept copy never lets
    come, and the verb's exit waits for the join's timeout (the pump is still alive after it)."""
    out = subprocess.run([sys.executable, "-c", KEPT_COPY, str(tmp_path)], capture_output=True, text=True,
                         timeout=60)
    assert "pumps left: 0" in out.stdout
    log = (tmp_path / "train.log").read_text()
    assert "before the end" in log and "x" * 200000 + "\n" in log and "after the end" not in log
    assert "rsgrpo-run-log-end" not in log and "rsgrpo-run-log-end" not in out.stderr
    assert "x" * 200000 in out.stderr


def test_only_a_possible_start_of_the_end_marker_is_held_back():
    from rsgrpo.train.run_log import _partial_end

    end = b"\0end-marker"
    assert _partial_end(b"a progress bar line", end) == 0  # copied at once, not held for the next read
    assert _partial_end(b"text\0en", end) == 3 and _partial_end(b"text\0", end) == 1
    assert _partial_end(b"text\0x", end) == 0 and _partial_end(b"\0end-marke", end) == len(end) - 1
