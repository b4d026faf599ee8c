"""Plan stage: pure planner and per-patient state (lifetime-value ledger) that turn events into CRM commands."""
