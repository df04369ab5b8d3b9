"""The OpenAI-compatible server (python -m lfm2_onnx.serve): FastAPI app, engine worker thread, metrics."""

from .app import ServerConfig, create_app

__all__ = ["ServerConfig", "create_app"]
