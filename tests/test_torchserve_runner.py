"""The TorchServe runner the commands and tests start servers with: it stops only what is TorchServe's, reads
token-authorization keys that TorchServe may still be writing, and picks ports another run cannot pick too."""

from __future__ import annotations

import subprocess
import sys

from anysize_tools import torchserve
from anysize_tools.torchserve import TorchServe, stop_process_group


def test_stop_leaves_a_process_group_that_is_not_torchserve_alone(tmp_path):
    """A stale pid file whose number now belongs to another program must not get that program killed."""
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert stop_process_group(other.pid, timeout=2) is False
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()


def test_keys_read_while_torchserve_writes_them_count_as_not_there_yet(tmp_path):
    server = TorchServe(tmp_path, tmp_path, [])
    assert server.keys() == {} and server.headers("inference") == {}
    (tmp_path / "key_file.json").write_text('{"management": {"key": "abc", "expira')
    assert server.keys() == {}
    (tmp_path / "key_file.json").write_text('{"inference": {"key": "k1"}, "management": {"key": "k2"}}')
    assert server.headers("inference") == {"Authorization": "Bearer k1"}


def test_two_runs_on_one_machine_never_get_the_same_free_port():
    """A port handed to another process (another test run) stays out of this one's choice until released, and
    every port lies below the kernel's ephemeral range, where no outgoing connection can take it first."""
    other = subprocess.Popen([sys.executable, "-c", "from anysize_tools.torchserve import free_port\n"
                              "ports = [free_port() for _ in range(2000)]\nprint(*ports, flush=True)\ninput()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ours = []
    try:
        theirs = set(map(int, other.stdout.readline().split()))
        assert len(theirs) == 2000
        ours = [torchserve.free_port() for _ in range(2000)]
        assert not theirs & set(ours)
        ephemeral_low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
        assert max(theirs | set(ours)) < ephemeral_low
    finally:
        other.communicate("\n", timeout=30)
        for port in ours:
            torchserve.release_port(port)
