"""`python -m apro_sync.apache_kafka`: fetch the test broker's jars (once) and say where they are."""

from apro_sync.apache_kafka import KAFKA_VERSION, ensure_jars

print(f"Apache Kafka {KAFKA_VERSION}: {ensure_jars()}")
