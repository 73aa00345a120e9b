"""`python -m wspush`, with the installed packages changed first as a future release might
change them (tests/test_serving.py): `python tests/engine_fallback_driver.py CHANGE FLAGS`.

- `new-attribute`: uvicorn's WebSocket protocol constructor sets an attribute more;
- `newer-uvicorn`: uvicorn says it is a release the engine was not checked against.
"""

from __future__ import annotations

import importlib.metadata
import sys
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

original_init = WebSocketsSansIOProtocol.__init__
original_version = importlib.metadata.version


def init_with_one_more_attribute(self: Any, *args: Any, **kwargs: Any) -> None:
    original_init(self, *args, **kwargs)
    self.added_upstream = None


def newer_uvicorn(package: str) -> str:
    return "0.55.0" if package == "uvicorn" else original_version(package)


if __name__ == "__main__":
    change = sys.argv.pop(1)
    if change == "new-attribute":
        WebSocketsSansIOProtocol.__init__ = init_with_one_more_attribute  # type: ignore[method-assign]
    elif change == "newer-uvicorn":
        importlib.metadata.version = newer_uvicorn
    else:
        raise SystemExit(f"unknown change {change!r}")
    from wspush.cli import main

    raise SystemExit(main())
