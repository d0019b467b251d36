"""What the web process serves: the app factory, the JSON API, metrics and health."""

from syncworker.web.app import create_app

__all__ = ["create_app"]
