"""The on-call command line: `invoice-gateway outbox …`, `circuit …`, `status …`, `token …` and
`callbacks …`.

    client.py    AdminClient: blocking calls to the admin API; every failure is an AdminApiError
                 carrying the exit code (1 refused, 3 unreachable, 4 token)
    render.py    Output: rich tables for people, JSON lines for scripts (--json)
    commands.py  the argparse tree and one function per command

`gateway/cli/main.py` mounts the five groups with `configure_outbox`, `configure_circuit`,
`configure_status`, `configure_token` and `configure_callbacks`.
"""

from gateway.cli.oncall.client import (
    EXIT_AUTH,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    AdminApiError,
    AdminAuthError,
    AdminClient,
    AdminUnreachable,
)
from gateway.cli.oncall.commands import (
    EXIT_CODES_EPILOG,
    configure_callbacks,
    configure_circuit,
    configure_outbox,
    configure_status,
    configure_token,
)

__all__ = [
    "EXIT_AUTH",
    "EXIT_CODES_EPILOG",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "AdminApiError",
    "AdminAuthError",
    "AdminClient",
    "AdminUnreachable",
    "configure_callbacks",
    "configure_circuit",
    "configure_outbox",
    "configure_status",
    "configure_token",
]
