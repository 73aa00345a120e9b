"""wspush: relay Redis pub/sub messages to WebSocket and Server-Sent Events clients."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wspush")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

# After __version__: these modules import it.
from wspush.factory import create_app
from wspush.jwt_tokens import sign_jwt
from wspush.publish import apublish, publish
from wspush.settings import Settings, SettingsError
from wspush.tokens import sign as sign_token

__all__ = [
    "Settings",
    "SettingsError",
    "__version__",
    "apublish",
    "create_app",
    "publish",
    "sign_jwt",
    "sign_token",
]
