"""Usage metering: one exact, durable record per request that reached a model."""

from modelmint.metering.events import UsageEvent
from modelmint.metering.writer import UsageWriter

__all__ = ["UsageEvent", "UsageWriter"]
