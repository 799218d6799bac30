"""The bounds every request is checked against: text the database refuses is found, times UTC
cannot hold are refused, and the documented ranges are the ones the code enforces."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from service import bounds
from tests.conftest import REPO


def test_nul_bytes_and_lone_surrogates_are_found_and_can_be_replaced() -> None:
    assert bounds.text_problem("tiny-vit") is None and bounds.text_problem("größe 🐱") is None
    assert bounds.text_problem("tiny\x00vit") == "holds a NUL byte"
    assert "surrogate" in (bounds.text_problem("a\ud800b") or "")
    assert bounds.storable("a\x00b\udfffc🐱") == "a\ufffdb\ufffdc🐱"


def test_a_time_utc_cannot_hold_is_refused_and_others_become_utc() -> None:
    assert bounds.in_utc(datetime(2026, 1, 1)) == datetime(2026, 1, 1, tzinfo=UTC)
    plus_two = datetime(2026, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))
    assert bounds.in_utc(plus_two) == datetime(2026, 1, 1, tzinfo=UTC)
    for edge in (
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),
        datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-10))),
    ):
        with pytest.raises(ValueError, match="0001-01-01 to 9999-12-31"):
            bounds.in_utc(edge)


def test_the_largest_numbers_fit_their_database_columns() -> None:
    assert bounds.MAX_CONCURRENCY <= bounds.INT32_MAX  # tenants.max_concurrency: Integer
    assert bounds.MAX_MONTHLY_QUOTA_INPUTS <= bounds.INT64_MAX  # monthly_quota_inputs: BigInteger
    assert bounds.MAX_SEED + bounds.MAX_EPOCHS < 2**64  # torch.manual_seed(seed + epoch)


def test_the_docs_list_every_range_the_code_enforces() -> None:
    heading = "# Value ranges\n"
    text = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    section = text.split(heading, 1)[1].split("\n#", 1)[0]
    rows = {line.split("|")[1]: line.split("|")[2] for line in section.splitlines() if line.startswith("|")}

    def documented(field: str, *values: object) -> None:
        [row] = [cells for name, cells in rows.items() if field in name]
        for value in values:
            assert str(value) in row, (field, value, row)

    documented("`rate_limit_rps`", int(bounds.MAX_RATE_LIMIT_RPS))
    documented("`max_concurrency`", 1, bounds.MAX_CONCURRENCY)
    documented("`monthly_quota_inputs`", 0, bounds.MAX_MONTHLY_QUOTA_INPUTS)
    documented("`grace_seconds`", int(bounds.MAX_GRACE_SECONDS))
    documented("`start`", bounds.EARLIEST.date(), bounds.LATEST.date())
    documented("`period`", bounds.FIRST_PERIOD, bounds.LAST_PERIOD)
    documented("`top_k`", bounds.MAX_TOP_K)
    documented("`candidate_labels`", bounds.MAX_CANDIDATE_LABELS, bounds.MAX_LABEL_CHARS)
    documented("`threshold`", 0, 1)
    documented("epochs", bounds.MAX_EPOCHS)
    documented("learning_rate", int(bounds.MAX_LEARNING_RATE))
    documented("batch_size", bounds.MAX_BATCH_SIZE)
    documented("seed", bounds.MAX_SEED)
    documented("lora_rank", bounds.MAX_LORA_RANK)
    documented("lora_alpha", bounds.MAX_LORA_ALPHA)
    documented("`allowed_models`", bounds.MAX_NAME_CHARS, bounds.MAX_NAMES)
    documented("`base_model`", bounds.MAX_ID_CHARS)
