"""Publishing from Celery: a long job pushes its progress to the user's open pages.

    REDIS_URL=redis://localhost:6379 WSPUSH_KEY=... celery -A examples.celery_app worker

`export_report.delay(42)` runs the job on a worker; the pages of user 42 get
{"job": ..., "progress": 0.2}, ... up to {"job": ..., "progress": 1.0, "done": true}.
"""

from __future__ import annotations

import functools
import os
import time
from typing import Any

import redis
from celery import Celery, Task

import wspush
from wspush.settings import decode_key

# The relay's own variables, so publisher and relay agree on Redis, key and prefix.
REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379")
PREFIX = os.environ.get("WSPUSH_PREFIX", "example.")

app = Celery("examples", broker=os.environ.get("CELERY_BROKER_URL", REDIS_URL))


@functools.cache
def push_redis() -> redis.Redis:
    """One client per worker process, made in the process on first use (after the fork)."""
    return redis.Redis.from_url(REDIS_URL)


def user_token(user_id: int) -> str:
    """The token for `?token=`: "user:<id>" signed with the relay's key (WSPUSH_KEY)."""
    return wspush.sign_token(decode_key(os.environ["WSPUSH_KEY"]), f"user:{user_id}".encode())


@app.task(bind=True)
def export_report(self: Task[Any, Any], user_id: int, steps: int = 5) -> int:
    token = user_token(user_id)
    for step in range(1, steps + 1):
        time.sleep(0.05)  # a slice of the real work
        update: dict[str, Any] = {"job": self.request.id, "progress": step / steps}
        if step == steps:
            update["done"] = True
        # Pub/sub keeps nothing: a page opened later asks your API for the job's state.
        wspush.publish(push_redis(), token, update, prefix=PREFIX)
    return steps
