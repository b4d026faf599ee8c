"""Webhook token check. AestheticsPro puts a shared secret in the webhook URL; we compare it in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from foundations.config import WebhookToken


def check_token(presented: str | None, tokens: Sequence[WebhookToken]) -> WebhookToken | None:
    """The configured token equal to `presented`, or None.

    Every configured token is compared (no early exit) with `hmac.compare_digest`, so the answer time does not
    tell an attacker which token, or how much of one, matched.
    """
    candidate = (presented or "").encode("utf-8", "surrogateescape")
    matched: WebhookToken | None = None
    for token in tokens:
        if hmac.compare_digest(candidate, token.secret.get_secret_value().encode("utf-8")):
            matched = token
    return matched
