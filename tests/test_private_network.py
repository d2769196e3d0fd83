"""launch/private_network.py: a command run in a private network sees only its own loopback, up,
as the same user, and what it listens on there is closed to everyone outside; where none can be
made, one line and the command never runs."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.toolkit import finish, start_module

pytestmark = pytest.mark.slow  # Starts processes, or trains for a while.

# Run inside: it connects to a server of its own on 127.0.0.1 (the loopback is up), says what
# it sees, and keeps the server open until the test has tried it from outside.
INSIDE = """
import json, os, socket, sys
server = socket.create_server(("127.0.0.1", 0))
socket.create_connection(server.getsockname()).close()
print(json.dumps({"interfaces": [name for _, name in socket.if_nameindex()],
                  "port": server.getsockname()[1], "uid": os.getuid(),
                  "network": os.readlink("/proc/self/ns/net")}), flush=True)
sys.stdin.readline()
"""

# Root makes the namespace directly; a process without CAP_SYS_ADMIN (any other user) makes it
# in a user namespace of its own, which root shows by giving that capability up.
WRAPPERS = {"as this user": ()}
if os.geteuid() == 0:
    WRAPPERS["without CAP_SYS_ADMIN"] = ("setpriv", "--bounding-set=-sys_admin")


@pytest.mark.parametrize("wrapper", WRAPPERS.values(), ids=WRAPPERS.keys())
def test_a_command_in_a_private_network_listens_where_no_one_outside_reaches(wrapper):
    inside = start_module(
        "launch.private_network",
        sys.executable,
        "-c",
        INSIDE,
        wrapper=wrapper,
        stdin=subprocess.PIPE,
    )
    line = inside.stdout.readline()
    try:
        assert line, finish(inside).stderr
        seen = json.loads(line)
        assert seen["interfaces"] == ["lo"]
        assert seen["uid"] == os.getuid()  # The user mapped to itself, not to an overflow id.
        assert seen["network"] != os.readlink("/proc/self/ns/net")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", seen["port"]), timeout=10)
    finally:
        inside.stdin.write("\n")
        inside.stdin.flush()
    done = finish(inside)
    assert done.returncode == 0, done.stderr


# Wrappers under which no private network can be made, and the line that says why.
REFUSALS = {
    # A user namespace that maps no one may make no namespace: unshare(2) says EPERM, as it
    # does where unprivileged user namespaces are disabled.
    "no namespaces": (
        ("unshare", "--user"),
        "unshare(CLONE_NEWNET): Operation not permitted; "
        "unshare(CLONE_NEWUSER|CLONE_NEWNET): Operation not permitted",
    ),
}
if os.geteuid() == 0:
    # The namespace is made, but its loopback cannot be brought up, as in a sandbox that
    # denies it.
    REFUSALS["without CAP_NET_ADMIN"] = (
        ("setpriv", "--bounding-set=-net_admin"),
        "bringing up lo: Operation not permitted",
    )


@pytest.mark.parametrize("wrapper, reason", REFUSALS.values(), ids=REFUSALS.keys())
def test_where_no_private_network_can_be_made_it_is_one_line_and_nothing_runs(
    wrapper, reason, tmp_path
):
    ran = tmp_path / "ran"
    done = finish(start_module("launch.private_network", "touch", ran, wrapper=wrapper))
    assert done.returncode == 1
    assert done.stderr == f"launch.private_network: error: {reason}\n"
    assert not ran.exists()
