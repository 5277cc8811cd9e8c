"""The detection service: `dfudet.serve.app.create_app` (FastAPI, one model behind a queue) and its web page."""

from __future__ import annotations
