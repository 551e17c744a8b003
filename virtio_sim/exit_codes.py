"""Exit statuses of every virtio-sim command, so scripts and the process runner agree."""

from __future__ import annotations

EXIT_OK = 0  # the run's outcome is OK (host: every guest said BYE)
EXIT_FAIL = 1  # the run's outcome is not OK, or a connection was refused
EXIT_USAGE = 2  # bad arguments or a configuration that cannot even be attempted
EXIT_PEER_LOST = 3  # the other process died or dropped the connection mid-run
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGTERM: shut down cleanly on request
EXIT_BROKEN_PIPE = 141  # stdout's reader went away (`| head`): 128 + SIGPIPE, as `yes | head` reports
