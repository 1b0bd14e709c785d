"""The operators' console: ``/console`` (static HTML/CSS/JS) and ``/v1/events`` (SSE)."""

from .component import ConsoleComponent, media_signature

__all__ = ["ConsoleComponent", "media_signature"]
