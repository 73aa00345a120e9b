"""Publishing from FastAPI: the lifespan owns one redis.asyncio client for the app.

    REDIS_URL=redis://localhost:6379 WSPUSH_KEY=... uvicorn examples.fastapi_app:app
    REDIS_URL=redis://localhost:6379 WSPUSH_JWT_SECRET=... uvicorn examples.fastapi_app:app

GET /push-token/42 gives user 42's browser its token (with WSPUSH_JWT_SECRET, a JWT
that expires in 10 minutes, for the page to renew); POST /users/42/notify (a JSON body)
pushes that body to every page user 42 has open.
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
JWT_TTL = 600  # seconds: a leaked token is worth little, and the page renews it


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Made inside the running event loop, and closed with it.
    async with aioredis.Redis.from_url(REDIS_URL) as client:
        app.state.redis = client
        yield


app = FastAPI(lifespan=lifespan)


def get_redis(request: Request) -> aioredis.Redis:
    return request.app.state.redis  # type: ignore[no-any-return]


def jwt_secret() -> str:
    """The relay's current JWT secret (the first of WSPUSH_JWT_SECRET), or empty."""
    return os.environ.get("WSPUSH_JWT_SECRET", "").split(",")[0]


def user_route(user_id: int) -> str:
    """What to publish to for user <id>: the JWTs' sub, or else the signed token itself
    ("user:<id>" signed with the relay's key, WSPUSH_KEY)."""
    if jwt_secret():
        return f"user:{user_id}"
    return wspush.sign_token(decode_key(os.environ["WSPUSH_KEY"]), f"user:{user_id}".encode())


@app.get("/push-token/{user_id}")
async def push_token(user_id: int) -> dict[str, str]:
    # In a real app: only for the logged-in user (a dependency that checks the session).
    if jwt_secret():  # a short-lived JWT whose sub is the route
        return {"token": wspush.sign_jwt(jwt_secret(), user_route(user_id), JWT_TTL)}
    return {"token": user_route(user_id)}


@app.post("/users/{user_id}/notify")
async def notify(
    user_id: int,
    message: Annotated[dict[str, Any], Body()],
    client: Annotated[aioredis.Redis, Depends(get_redis)],
) -> dict[str, int]:
    relays = await wspush.apublish(client, user_route(user_id), message, prefix=PREFIX)
    # `relays` counts wspush processes that got it, not browsers: 0 means none is running.
    return {"relays": relays}
