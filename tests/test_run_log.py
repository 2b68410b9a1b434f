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
