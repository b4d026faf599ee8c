"""apro-sync: AestheticsPro webhooks → Kafka → GoHighLevel."""

__version__ = "0.1.0"
