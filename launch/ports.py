"""Free TCP ports on 127.0.0.1, for the servers our tools start: launch.local's workers,
TensorBoard for the screenshots and the tests."""

import socket


def free_ports(count: int) -> list[int]:
    """`count` different ports the kernel hands out as free on 127.0.0.1.

    The sockets are held open together so that the ports differ, then closed for the caller's
    servers to bind. Another process could take one in between; on one machine that is rare.
    """
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
