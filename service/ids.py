"""Ids of the gateway's objects: a kind prefix and 96 random bits (`req_…`, `ten_…`, `ftjob_…`)."""

from __future__ import annotations

import secrets


def new_id(kind: str) -> str:
    return f"{kind}_{secrets.token_hex(12)}"
