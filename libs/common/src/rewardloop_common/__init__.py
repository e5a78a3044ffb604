"""rewardloop shared library: event schemas, settings, Kafka/Redis helpers, weights store, proto stubs."""

__version__ = "0.1.0"
