"""`make generate` (tutorial step 2) reproduces the committed greeter code exactly, so
the tree stays clean and `make lint` keeps passing after it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
GENERATED = (
    "grpc_balancer/demo/greeter_pb2.py",
    "grpc_balancer/demo/greeter_pb2.pyi",
    "grpc_balancer/demo/greeter_pb2_grpc.py",
    "grpc_balancer/_orca/orca_pb2.py",
    "grpc_balancer/_orca/orca_pb2.pyi",
    "grpc_balancer/_probe/probe_pb2.py",
    "grpc_balancer/_probe/probe_pb2.pyi",
)


def test_make_generate_reproduces_the_committed_files(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    subprocess.run(
        [
            "make",
            "--no-print-directory",
            "generate-into",
            f"GEN_OUT={tmp_path}",
            f"PY={sys.executable}",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
    )
    for name in GENERATED:
        assert (tmp_path / name).read_text() == (SRC / name).read_text(), name


def test_the_generated_files_are_not_linted() -> None:
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run(
        [str(ruff), "check", "--force-exclude", *(str(SRC / n) for n in GENERATED)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout
