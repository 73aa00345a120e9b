"""Publishing from Django: one Redis client per process, made on first use.

    REDIS_URL=redis://localhost:6379 WSPUSH_KEY=... python examples/django_app.py runserver
    REDIS_URL=redis://localhost:6379 WSPUSH_JWT_SECRET=... python examples/django_app.py runserver

This is a whole Django project in one file; in yours, the WSPUSH_* settings go in
settings.py and `push_redis` in any module your views import. GET /push-token/42
gives user 42's browser its token (with WSPUSH_JWT_SECRET, a JWT that expires in 10
minutes, for the page to renew); POST /users/42/notify (a JSON body) pushes that body to
every page user 42 has open.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import redis
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.http import require_GET, require_POST

import wspush
from wspush.settings import decode_key

if not settings.configured:
    settings.configure(
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["*"],
        SECRET_KEY=os.environ.get("DJANGO_SECRET_KEY", "only-for-this-example"),
        # The relay's own variables, so publisher and relay agree on Redis, key and prefix.
        WSPUSH_REDIS_URL=os.environ.get("REDIS_URL", "redis://localhost:6379"),
        WSPUSH_KEY=os.environ.get("WSPUSH_KEY", ""),
        WSPUSH_JWT_SECRET=os.environ.get("WSPUSH_JWT_SECRET", "").split(",")[0],
        WSPUSH_PREFIX=os.environ.get("WSPUSH_PREFIX", "example."),
    )


@functools.cache
def push_redis() -> redis.Redis:
    """The process's client, made on first use: after settings are loaded and after any
    fork (gunicorn --preload), so workers never share a connection. It is thread-safe."""
    return redis.Redis.from_url(settings.WSPUSH_REDIS_URL)


JWT_TTL = 600  # seconds: a leaked token is worth little, and the page renews it


def user_route(user_id: int) -> str:
    """What to publish to for user <id>: the JWTs' sub, or else the signed token itself
    ("user:<id>" signed with the relay's key, WSPUSH_KEY)."""
    if settings.WSPUSH_JWT_SECRET:
        return f"user:{user_id}"
    return wspush.sign_token(decode_key(settings.WSPUSH_KEY), f"user:{user_id}".encode())


@require_GET
def push_token(request: HttpRequest, user_id: int) -> JsonResponse:
    # In a real app: only for request.user, behind login_required.
    if settings.WSPUSH_JWT_SECRET:  # a short-lived JWT whose sub is the route
        token = wspush.sign_jwt(settings.WSPUSH_JWT_SECRET, user_route(user_id), JWT_TTL)
        return JsonResponse({"token": token})
    return JsonResponse({"token": user_route(user_id)})


@require_POST
def notify(request: HttpRequest, user_id: int) -> JsonResponse:
    message = json.loads(request.body)
    relays = wspush.publish(
        push_redis(), user_route(user_id), message, prefix=settings.WSPUSH_PREFIX
    )
    # `relays` counts wspush processes that got it, not browsers: 0 means none is running.
    return JsonResponse({"relays": relays})


urlpatterns = [
    path("push-token/<int:user_id>", push_token),
    path("users/<int:user_id>/notify", notify),
]

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
