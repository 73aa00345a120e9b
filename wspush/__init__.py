"""wspush: relay Redis pub/sub messages to WebSocket and Server-Sent Events clients."""

from wspush.factory import create_app
from wspush.jwt_tokens import sign_jwt
from wspush.publish import acurrent_position, apublish, current_position, publish
from wspush.settings import Settings, SettingsError
from wspush.tokens import sign as sign_token
from wspush.version import __version__

__all__ = [
    "Settings",
    "SettingsError",
    "__version__",
    "acurrent_position",
    "apublish",
    "create_app",
    "current_position",
    "publish",
    "sign_jwt",
    "sign_token",
]
