"""In-process counters of calls by provider and fallback reason, readable by the app.

``ProviderCounters.snapshot()`` returns plain dicts (thread-safe). With
``prometheus_client`` installed, ``register_prometheus(registry)`` exposes the same
figures as ``telephony_calls_total{provider,reason}`` and
``telephony_fallbacks_total{reason}`` (imported only when called: importing the
provider library never pulls ``prometheus_client``).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from .base import Path

__all__ = ["ProviderCounters"]


class ProviderCounters:
    """Calls placed per (provider, reason) and fallbacks per reason, plus recent choices.

    ``reason`` of a call: ``"selected"`` (the provider was configured or chosen by the
    rollout), ``"rollout"``/``"rollout_excluded"`` (inside / outside the percentage) or
    the fallback reason (``connection_refused``, ``http_503``, ``http_429``,
    ``unhealthy``, ``circuit_open``...) when the Asterisk path could not take it.
    """

    def __init__(self, *, recent: int = 200, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._calls: Counter[tuple[str, str]] = Counter()
        self._fallbacks: Counter[str] = Counter()
        self._failures: Counter[tuple[str, str]] = Counter()
        self._recent: deque[dict[str, Any]] = deque(maxlen=recent)
        self._clock = clock

    def record_call(self, provider: Path, reason: str, *, tenant: str = "",
                    call_id: str = "", fallback: bool = False) -> None:
        with self._lock:
            self._calls[(provider, reason)] += 1
            if fallback:
                self._fallbacks[reason] += 1
            self._recent.append({"at": self._clock(), "provider": provider, "reason": reason,
                                 "tenant": tenant, "call_id": call_id, "fallback": fallback})

    def record_failure(self, provider: Path, reason: str) -> None:
        """A create that failed on ``provider`` (whether or not it fell back)."""
        with self._lock:
            self._failures[(provider, reason)] += 1

    def snapshot(self) -> dict[str, Any]:
        """``{"calls": {provider: n}, "calls_by_reason": {"provider/reason": n},
        "fallbacks": {reason: n}, "failures": {"provider/reason": n}, "recent": [...]}``."""
        with self._lock:
            calls: Counter[str] = Counter()
            for (provider, _), n in self._calls.items():
                calls[provider] += n
            return {
                "calls": dict(calls),
                "calls_by_reason": {f"{p}/{r}": n for (p, r), n in self._calls.items()},
                "fallbacks": dict(self._fallbacks),
                "failures": {f"{p}/{r}": n for (p, r), n in self._failures.items()},
                "recent": list(self._recent),
            }

    def register_prometheus(self, registry: Any = None) -> None:
        """Expose the counters through ``prometheus_client`` (imported here, lazily)."""
        from prometheus_client import REGISTRY
        from prometheus_client.core import CounterMetricFamily

        counters = self

        class _Collector:
            def collect(self) -> Any:
                with counters._lock:
                    calls = dict(counters._calls)
                    fallbacks = dict(counters._fallbacks)
                c = CounterMetricFamily("telephony_calls", "Calls placed by provider and reason",
                                        labels=["provider", "reason"])
                for (p, r), n in sorted(calls.items()):
                    c.add_metric([p, r], n)
                yield c
                f = CounterMetricFamily("telephony_fallbacks",
                                        "Calls that fell back to Twilio, by reason",
                                        labels=["reason"])
                for r, n in sorted(fallbacks.items()):
                    f.add_metric([r], n)
                yield f

        (registry if registry is not None else REGISTRY).register(_Collector())
