"""The default app, for `uvicorn wspush.app:app`: settings from the environment and `.env`."""

from wspush.factory import create_app

app = create_app()
