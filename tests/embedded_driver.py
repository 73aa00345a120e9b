"""Run inside a fresh network namespace (nothing on 127.0.0.1:6379) by test_cli.py.

Starts `python -m wspush` with the given extra arguments and no Redis configured,
checks what happens, and prints one JSON line with the findings.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import redis

from wspush.embedded import redis_answers


def wait(condition, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    return False


def main() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "WSPUSH_REDIS", "PORT")}
    process = subprocess.Popen(
        [sys.executable, "-m", "wspush", "-addr", "127.0.0.1:8080", *sys.argv[1:]],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    found: dict[str, object] = {}
    try:
        found["ready"] = wait(
            lambda: httpx.get("http://127.0.0.1:8080/ready").status_code == 200, 10
        )
        found["embedded_answers"] = redis_answers("127.0.0.1", 6379)
        if found["ready"]:
            with httpx.stream("GET", "http://127.0.0.1:8080/sse?token=emb", timeout=5) as response:
                redis.Redis(port=6379).publish("example.emb", "from embedded")
                for chunk in response.iter_raw():
                    found["delivered"] = chunk.decode()
                    break
    finally:
        process.send_signal(signal.SIGTERM)
        found["exit_code"] = process.wait(timeout=10)
    found["answers_after_exit"] = redis_answers("127.0.0.1", 6379)
    assert process.stdout is not None
    found["log"] = process.stdout.read().decode(errors="replace")
    print(json.dumps(found))


if __name__ == "__main__":
    main()
