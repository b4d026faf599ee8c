"""GoHighLevel API v2 client: errors, rate limiting, retries, typed results."""

from sinks.ghl.client import GhlClient, TagsInContactWrite
from sinks.ghl.errors import GhlError, GhlPermanentError, GhlRateLimited, GhlTransientError
from sinks.ghl.models import (
    Contact, ContactInput, CustomFieldDef, CustomFieldValue, Note, Opportunity, Pipeline, Stage, UpsertResult,
    Workflow,
)
from sinks.ghl.ratelimit import RateLimiter
from sinks.ghl.retry import RetryPolicy

__all__ = [
    "Contact", "ContactInput", "CustomFieldDef", "CustomFieldValue", "GhlClient", "GhlError", "GhlPermanentError",
    "GhlRateLimited", "GhlTransientError", "Note", "Opportunity", "Pipeline", "RateLimiter", "RetryPolicy", "Stage",
    "TagsInContactWrite", "UpsertResult", "Workflow",
]
