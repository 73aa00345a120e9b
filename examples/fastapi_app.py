"""Publishing from FastAPI: the lifespan owns one redis.asyncio client for the app.

    REDIS_URL=redis://localhost:6379 WSPUSH_KEY=... uvicorn examples.fastapi_app:app

GET /push-token/42 gives user 42's browser its token; POST /users/42/notify (a JSON
body) pushes that body to every page user 42 has open.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import redis.asyncio as aioredis
from fastapi import Body, Depends, FastAPI, Request

import wspush
from wspush.settings import decode_key

# The relay's own variables, so publisher and relay agree on Redis, key and prefix.
REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379")
PREFIX = os.environ.get("WSPUSH_PREFIX", "example.")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Made inside the running event loop, and closed with it.
    async with aioredis.Redis.from_url(REDIS_URL) as client:
        app.state.redis = client
        yield


app = FastAPI(lifespan=lifespan)


def get_redis(request: Request) -> aioredis.Redis:
    return request.app.state.redis  # type: ignore[no-any-return]


def user_token(user_id: int) -> str:
    """The token for `?token=`: "user:<id>" signed with the relay's key (WSPUSH_KEY)."""
    return wspush.sign_token(decode_key(os.environ["WSPUSH_KEY"]), f"user:{user_id}".encode())


@app.get("/push-token/{user_id}")
async def push_token(user_id: int) -> dict[str, str]:
    # In a real app: only for the logged-in user (a dependency that checks the session).
    return {"token": user_token(user_id)}


@app.post("/users/{user_id}/notify")
async def notify(
    user_id: int,
    message: Annotated[dict[str, Any], Body()],
    client: Annotated[aioredis.Redis, Depends(get_redis)],
) -> dict[str, int]:
    relays = await wspush.apublish(client, user_token(user_id), message, prefix=PREFIX)
    # `relays` counts wspush processes that got it, not browsers: 0 means none is running.
    return {"relays": relays}
