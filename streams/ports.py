"""Whether a TCP port is free to listen on, and the one line a command prints when it is not.

Owns nothing and reads no settings: each command names the setting (or option) that moves its port.
"""

from __future__ import annotations

import errno
import socket


def port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on now (in use, not allowed, no such address), or None if it can.

    Binds and closes at once, with SO_REUSEADDR as the servers themselves use: a port in TIME_WAIT is
    free, one with a listener is not. A server starting a moment later can still lose the port to a
    race; this check is for the common case, a second copy or another program already there.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "is already in use"
            if exc.errno == errno.EACCES:
                return "needs privileges this user lacks"
            if exc.errno == errno.EADDRNOTAVAIL:
                return "is on an address this machine does not have"
            return f"cannot be listened on ({exc.strerror or exc})"
    return None


def busy_port_message(what: str, host: str, port: int, problem: str, moved_by: str) -> str:
    """One line: which port, what is wrong, and the setting or option that moves it."""
    return f"{what} cannot listen on {host}:{port}: the port {problem}; choose another with {moved_by}"
