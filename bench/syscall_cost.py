"""What one loopback send() costs on this machine: the floor under any relay's per-delivery
cost, since every delivery is (at least part of) one write to a client socket.

    python bench/syscall_cost.py

A reader process on the other CPU drains the socket; the writer on CPU 0 reports its
own CPU time per write for 1, 4 and 16 messages of 100 bytes per write (Linux only).
"""

from __future__ import annotations

import os
import socket
import time

WRITES = 50_000
MESSAGE = b"x" * 100


def main() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    child = os.fork()
    if child == 0:
        os.sched_setaffinity(0, {1 % os.cpu_count()})  # type: ignore[operator]
        reader = socket.create_connection(("127.0.0.1", port))
        while reader.recv(65536):
            pass
        os._exit(0)
    os.sched_setaffinity(0, {0})
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    print(f"loopback TCP, {len(MESSAGE)} B messages, writer on CPU 0, reader on CPU 1")
    for batch in (1, 4, 16):
        writes = WRITES // batch
        data = MESSAGE * batch
        started = time.process_time()
        for _ in range(writes):
            conn.sendall(data)
        spent = time.process_time() - started
        print(
            f"{batch:>2} message(s) per write: {spent / writes * 1e6:6.1f} us per write, "
            f"{spent / (writes * batch) * 1e6:5.2f} us per message"
        )
    conn.close()
    os.waitpid(child, 0)


if __name__ == "__main__":
    main()
