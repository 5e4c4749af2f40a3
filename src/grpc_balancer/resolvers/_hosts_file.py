"""Names from ``/etc/hosts``, for ``dns:`` targets that use the system's resolver.

grpcio (getaddrinfo) reads the hosts file before DNS; dnspython does not. Without
this, a name that only exists in ``/etc/hosts`` (docker ``--add-host``, Kubernetes
``hostAliases``) would resolve to nothing. The file is re-read when it changes.
"""

from __future__ import annotations

import ipaddress
import os


class HostsFile:
    """Lazy, mtime-cached view of a hosts file; a missing or unreadable file is empty."""

    def __init__(self, path: str = "/etc/hosts") -> None:
        self.path = path
        self._stamp: tuple[float, int] | None = None
        self._names: dict[str, list[str]] = {}

    def lookup(self, host: str) -> list[str]:
        """The addresses listed for ``host`` (IPv4 first, sorted), or ``[]``."""
        self._refresh()
        return self._names.get(host.lower().rstrip("."), [])

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            self._stamp, self._names = None, {}
            return
        stamp = (st.st_mtime, st.st_size)
        if stamp == self._stamp:
            return
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            text = ""
        self._stamp, self._names = stamp, parse_hosts(text)


def parse_hosts(text: str) -> dict[str, list[str]]:
    """``name → addresses`` from hosts-file text (comments and bad lines ignored)."""
    found: dict[str, set[str]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        address = fields[0].split("%", 1)[0]
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue
        for name in fields[1:]:
            found.setdefault(name.lower().rstrip("."), set()).add(str(ip))
    return {
        name: sorted(ips, key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a)))
        for name, ips in found.items()
    }
