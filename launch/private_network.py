"""A private network for a job's processes: a fresh Linux network namespace holding only its own
loopback interface, brought up, so that they talk over 127.0.0.1 and nothing outside can reach
the ports they listen on.

TensorFlow's multi-worker gRPC servers listen on all interfaces and run any op a client sends,
unauthenticated; launch.local therefore starts its workers in one of these.

    python -m launch.private_network COMMAND [ARG ...]

runs COMMAND in a new one. As root the namespace is made directly; as another user, inside a
new user namespace that maps the user to itself (where the kernel allows unprivileged user
namespaces), so COMMAND runs with the user's own identity and files. Python 3.11 has no
os.unshare, hence libc's through ctypes; the loopback is brought up with an ioctl rather than
`ip link`, which iproute2 would have to be installed for.
"""

import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct
import subprocess
import sys

# <sched.h>, <linux/sockios.h>, <net/if.h>.
CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
# struct ifreq: the interface name, then a union whose first member here is the flags (short);
# 40 bytes in all on 64-bit Linux.
_IFREQ = struct.Struct("16sh22x")


class Unavailable(OSError):
    """This process cannot make a network namespace; the message says why."""


def enter() -> None:
    """Moves this (single-threaded) process into a new network namespace with only loopback,
    brought up. Raises Unavailable if the kernel refuses."""
    if not sys.platform.startswith("linux"):
        raise Unavailable(f"network namespaces are Linux's; this is {sys.platform}")
    unshare = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).unshare
    if unshare(CLONE_NEWNET) != 0:
        alone = f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}"
        # Without CAP_SYS_ADMIN (not root): a new user namespace grants it there, over the
        # network namespace made with it.
        uid, gid = os.geteuid(), os.getegid()
        if unshare(CLONE_NEWUSER | CLONE_NEWNET) != 0:
            raise Unavailable(
                f"{alone}; unshare(CLONE_NEWUSER|CLONE_NEWNET): {os.strerror(ctypes.get_errno())}"
            )
        try:
            _map_to_self(uid, gid)
        except Unavailable as e:
            raise Unavailable(f"{alone}; in a user namespace, {e}") from None
    try:
        _bring_up("lo")
    except OSError as e:  # A sandbox (AppArmor, seccomp) may deny what the namespace allows.
        raise Unavailable(f"bringing up lo: {e.strerror}") from None


def _map_to_self(uid: int, gid: int) -> None:
    """Maps the user and group to themselves in the new user namespace: files keep their
    owners, and the process stays who it was rather than becoming that namespace's root."""
    # "deny" first: the kernel's condition for an unprivileged process's gid_map.
    for name, text in (
        ("setgroups", "deny"),
        ("uid_map", f"{uid} {uid} 1"),
        ("gid_map", f"{gid} {gid} 1"),
    ):
        try:
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
        except OSError as e:  # Mapping uid 0 needs CAP_SETFCAP: root without capabilities.
            raise Unavailable(f"writing /proc/self/{name}: {e.strerror}") from None


def _bring_up(interface: str) -> None:
    """A new namespace's loopback starts down; up, it answers on 127.0.0.1 and ::1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        name = interface.encode()
        _, flags = _IFREQ.unpack(fcntl.ioctl(s, SIOCGIFFLAGS, _IFREQ.pack(name, 0)))
        fcntl.ioctl(s, SIOCSIFFLAGS, _IFREQ.pack(name, flags | IFF_UP))


def start(command: list[str], **popen_options) -> subprocess.Popen:
    """Starts `command` (subprocess.Popen's `popen_options`) in a private network of its own.

    Raises Unavailable, with nothing started, where that cannot be made. The namespace is
    entered by a fresh interpreter (this module's main) that then executes `command`:
    unshare(CLONE_NEWUSER) needs a single-threaded process, and the caller may have threads.
    """
    report_read, report_write = os.pipe()
    try:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "launch.private_network",
                f"--report_fd={report_write}",
                *command,
            ],
            pass_fds=(report_write,),
            **popen_options,
        )
    finally:
        os.close(report_write)
    # Empty at end of file: the pipe closed when `command` replaced main (close-on-exec).
    with open(report_read, "rb") as report:
        error = report.read().decode()
    if error:
        process.wait()
        raise Unavailable(error)
    return process


def main(argv: list[str]) -> None:
    """Enters a private network and becomes COMMAND; or says why not, on --report_fd (start's
    pipe) if given, else as one line on stderr."""
    report_fd = None
    if argv and argv[0].startswith("--report_fd="):
        report_fd = int(argv.pop(0).removeprefix("--report_fd="))
        os.set_inheritable(report_fd, False)
    if not argv:
        sys.exit("usage: python -m launch.private_network COMMAND [ARG ...]")
    try:
        enter()
    except Unavailable as e:
        if report_fd is None:
            sys.exit(f"launch.private_network: error: {e}")
        os.write(report_fd, str(e).encode())
        sys.exit(1)
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        sys.exit(f"launch.private_network: error: {argv[0]}: {e.strerror}")


if __name__ == "__main__":
    main(sys.argv[1:])
