import os
import sys

# Under `python -m rsgrpo.preload -- ...` (make demo) a server that has the verbs' libraries imported
# runs the verb in a forked worker; the variable goes either way, so what the verb starts starts fresh.
socket_path = os.environ.pop("RSGRPO_PRELOAD_SOCKET", None)
if socket_path:
    from rsgrpo.preload import run_via_server

    code = run_via_server(socket_path, "rsgrpo", sys.argv)
    if code is not None:
        sys.exit(code)

from rsgrpo.cli import main  # noqa: E402

sys.exit(main())
