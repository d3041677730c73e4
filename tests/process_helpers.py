"""Running torchrun process groups from tests: shared by test_distributed.py and test_experiments.py."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import pytest


def run_process_group(cmd: list[str], *, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """subprocess.run in a new session; on timeout the whole group (torchrun's agent and workers) is killed."""
    if "lo" in {name for _, name in socket.if_nameindex()}:  # keep gloo on the loopback interface
        kwargs["env"] = {**kwargs.get("env", os.environ), "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {' '.join(cmd)}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
