"""The TorchServe runner the commands and tests start servers with: it stops only what is TorchServe's, and reads
token-authorization keys that TorchServe may still be writing."""

from __future__ import annotations

import subprocess

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
