"""Operator tools: replay, dlq, peek, lag, with their Kafka reading (kafka_io) and record selection (selection)."""
