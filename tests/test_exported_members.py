"""``__all__`` is exactly the public surface (as httpx's tests/test_exported_members.py).

Checked in a fresh interpreter: in this one, other tests have imported more submodules
(``grpc_balancer.testing``, ``.metrics``, ``.demo``...), each bound as an attribute of the
package once imported.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from grpc_balancer.testing import cli_env

_SCRIPT = """
import importlib, json, sys
module = importlib.import_module(sys.argv[1])
print(json.dumps({"all": module.__all__, "vars": list(vars(module))}))
"""

#: Dunder names that are part of the API.
INCLUDED_PRIVATE_MEMBERS = {"__version__"}


@pytest.mark.parametrize("module", ["grpc_balancer", "grpc_balancer.aio"])
def test_all_is_exactly_the_public_names(module: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _SCRIPT, module],
        env=cli_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    public = sorted(
        name
        for name in found["vars"]
        if not name.startswith("_") or name in INCLUDED_PRIVATE_MEMBERS
    )
    assert found["all"] == public


def test_event_is_a_str_enum_observers_can_compare() -> None:
    import grpc_balancer

    assert grpc_balancer.Event.RETRY == "retry"
    assert isinstance(grpc_balancer.Event.HEDGE, str)
    assert {e.value for e in grpc_balancer.Event} == {
        "retry", "transparent_retry", "throttled", "hedge", "saturated", "rejected",
        "ejected", "unejected", "health",
    }  # fmt: skip
