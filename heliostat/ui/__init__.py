"""The web UI: ``create_app`` builds the FastAPI app ``heliostat ui`` serves."""

from heliostat.ui.app import create_app

__all__ = ["create_app"]
