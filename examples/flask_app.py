"""Publishing from Flask: the Redis client is an app extension, made by the app factory.

    REDIS_URL=redis://localhost:6379 WSPUSH_KEY=... flask --app examples.flask_app run
    REDIS_URL=redis://localhost:6379 WSPUSH_JWT_SECRET=... flask --app examples.flask_app run

GET /push-token/42 gives user 42's browser its token (with WSPUSH_JWT_SECRET, a JWT
that expires in 10 minutes, for the page to renew); POST /users/42/notify (a JSON body)
pushes that body to every page user 42 has open.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import redis
from flask import Blueprint, Flask, current_app, jsonify, request
from flask.typing import ResponseReturnValue

import wspush
from wspush.settings import decode_key

push = Blueprint("push", __name__)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    # The relay's own variables, so publisher and relay agree on Redis, key and prefix.
    app.config.update(
        WSPUSH_REDIS_URL=os.environ.get("REDIS_URL", "redis://localhost:6379"),
        WSPUSH_KEY=os.environ.get("WSPUSH_KEY", ""),
        WSPUSH_JWT_SECRET=os.environ.get("WSPUSH_JWT_SECRET", "").split(",")[0],
        WSPUSH_PREFIX=os.environ.get("WSPUSH_PREFIX", "example."),
    )
    app.config.update(config or {})
    # One client (and connection pool) per app, shared by all requests and threads.
    app.extensions["wspush_redis"] = redis.Redis.from_url(app.config["WSPUSH_REDIS_URL"])
    app.register_blueprint(push)
    return app


JWT_TTL = 600  # seconds: a leaked token is worth little, and the page renews it


def user_route(user_id: int) -> str:
    """What to publish to for user <id>: the JWTs' sub, or else the signed token itself
    ("user:<id>" signed with the relay's key, WSPUSH_KEY)."""
    if current_app.config["WSPUSH_JWT_SECRET"]:
        return f"user:{user_id}"
    return wspush.sign_token(
        decode_key(current_app.config["WSPUSH_KEY"]), f"user:{user_id}".encode()
    )


@push.get("/push-token/<int:user_id>")
def push_token(user_id: int) -> ResponseReturnValue:
    # In a real app: only for the logged-in user (user_id from the session).
    secret = current_app.config["WSPUSH_JWT_SECRET"]
    if secret:  # a short-lived JWT whose sub is the route
        return jsonify(token=wspush.sign_jwt(secret, user_route(user_id), JWT_TTL))
    return jsonify(token=user_route(user_id))


@push.post("/users/<int:user_id>/notify")
def notify(user_id: int) -> ResponseReturnValue:
    client: redis.Redis = current_app.extensions["wspush_redis"]
    relays = wspush.publish(
        client, user_route(user_id), request.get_json(), prefix=current_app.config["WSPUSH_PREFIX"]
    )
    # `relays` counts wspush processes that got it, not browsers: 0 means none is running.
    return jsonify(relays=relays)
