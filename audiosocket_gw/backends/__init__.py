"""Backends: where a call's audio goes (echo, OpenAI Realtime, a Twilio-streams app)."""

from .base import Backend, BackendError, BackendSession, CallControl, CallInfo

__all__ = ["Backend", "BackendError", "BackendSession", "CallControl", "CallInfo"]
