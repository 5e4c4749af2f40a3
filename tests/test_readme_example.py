"""The README's first example runs as printed (only the two ports differ), against two
real greeter servers: what a new user copies first must work."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

from grpc_balancer.testing import ServerProcesses, cli_env

README = Path(__file__).resolve().parent.parent / "README.md"


def _first_python_block() -> str:
    match = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert match is not None, "the README has no python example"
    return match.group(1)


def test_first_example_balances_over_both_servers() -> None:
    code = _first_python_block()
    assert "localhost:50051,localhost:50052" in code
    with ServerProcesses(2) as servers:
        ports = [address.rsplit(":", 1)[1] for address in servers.addresses]
        code = code.replace("50051", ports[0]).replace("50052", ports[1])
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            env=cli_env(),
            check=False,
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4
    seen = [re.fullmatch(r"Hello World \(from :(\d+)\)", line) for line in lines]
    assert all(seen), lines
    order = [m.group(1) for m in seen if m]
    assert set(order) == set(ports)
    assert all(a != b for a, b in itertools.pairwise(order)), order  # alternating
