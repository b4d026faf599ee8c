"""Reliability tests: hostile input (fuzz), security, broker outage; later crash tests reuse `harness` and `generator`."""
