"""The ``loopai`` command: the same CLI as the Rust binary, from the Python package.

``loopai synth``, ``loopai exec``, ``loopai serve``, ... run in this process (the GIL is
released while they run). Installed as the ``loopai`` script by ``pip install
loopai-runtime``; also ``python -m loopai``.
"""

from __future__ import annotations

import signal
import sys

from loopai._loopai import _cli_main


def main() -> int:
    """Runs the command with ``sys.argv`` and returns its exit status.

    Ctrl-C ends the command at once, as it ends the Rust binary (Python's
    ``KeyboardInterrupt`` could not interrupt native code): SIGINT gets its default
    action, except under ``loopai serve``, which drains and flushes on SIGINT and SIGTERM.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    sys.stdout.flush()
    sys.stderr.flush()
    return _cli_main(["loopai", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
