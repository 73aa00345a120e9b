"""The engine's uvicorn protocols under their first name, for command lines that use it:
`uvicorn --http wspush.protocols:HttpToolsDirectProtocol --ws
wspush.protocols:WebSocketsSansIODirectProtocol` (see `wspush.engine`)."""

from wspush.engine.http import HttpToolsDirectProtocol
from wspush.engine.websocket import WebSocketsSansIODirectProtocol

__all__ = ["HttpToolsDirectProtocol", "WebSocketsSansIODirectProtocol"]
