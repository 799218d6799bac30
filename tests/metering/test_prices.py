"""The price book: money as integer micro-units, and price versions that never rewrite the past."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from service.db import create_db_engine, session_factory, upgrade
from service.metering import (
    BATCH,
    INFERENCE,
    TRAINING,
    PriceBook,
    UnitPrice,
    format_micro,
    manifest_prices,
    to_micro,
)
from service.serving.manifests import Price
from tests.conftest import fresh_postgres_database, postgres_url_or_skip


@pytest.mark.parametrize(
    ("amount", "micro"),
    [
        (0.0002, 200),
        (0.001, 1000),
        (0.1, 100_000),
        (1.5, 1_500_000),
        ("0.0000005", 1),
        (0, 0),
        (Decimal("3"), 3_000_000),
    ],
)
def test_prices_become_exact_micro_units(amount: float | str | Decimal, micro: int) -> None:
    assert to_micro(amount) == micro


@pytest.mark.parametrize(
    ("discount", "per_input", "per_second"),
    [(0.0, 1000, 10_000), (0.4, 600, 6000), (1.0, 0, 0), (0.3333, 667, 6667)],
)
def test_batch_prices_are_the_inference_prices_less_the_discount(
    discount: float, per_input: int, per_second: int
) -> None:
    price = Price(per_image=0.001, per_compute_second=0.01, batch_discount=discount)
    assert manifest_prices(price)[BATCH] == UnitPrice(per_input, per_second)
    assert manifest_prices(price)[INFERENCE] == UnitPrice(1000, 10_000)  # interactive pays in full


def test_a_negative_or_garbage_price_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        to_micro(-1)
    with pytest.raises(ValueError, match="not a price"):
        to_micro("abc")


@pytest.mark.parametrize(
    ("micro", "text"), [(0, "0.000000"), (1, "0.000001"), (1_234_567, "1.234567"), (-5, "-0.000005")]
)
def test_micro_units_display_as_six_place_decimals(micro: int, text: str) -> None:
    assert format_micro(micro) == text


def test_an_amount_is_inputs_times_price_plus_compute_rounded_half_up() -> None:
    price = UnitPrice(per_input_micro=200, per_compute_second_micro=3)
    assert price.amount(3, 0) == 600
    assert price.amount(1, 500_000) == 200 + 2  # 1.5 micro -> 2
    assert price.amount(1, 499_999) == 200 + 1  # 1.499997 -> 1
    assert isinstance(price.amount(7, 123_456), int)


def test_a_changed_manifest_price_adds_a_version_and_keeps_the_old_one(
    sessions: sessionmaker[Session],
) -> None:
    clock = [datetime(2026, 10, 1, tzinfo=UTC)]
    book = PriceBook(sessions, now=lambda: clock[0])
    assert book.sync([("vit", UnitPrice(200)), ("bert", UnitPrice(0, 5))]) == ["vit", "bert"]
    clock[0] += timedelta(days=1)
    assert PriceBook(sessions, now=lambda: clock[0]).sync([("vit", UnitPrice(200))]) == []  # restart, same
    clock[0] += timedelta(days=30)
    book = PriceBook(sessions, now=lambda: clock[0])
    assert book.sync([("vit", UnitPrice(300))]) == ["vit"]
    history = book.history("vit")
    assert [(r.per_input_micro, r.effective_from) for r in history] == [
        (200, datetime(2026, 10, 1, tzinfo=UTC)),
        (300, datetime(2026, 11, 1, tzinfo=UTC)),
    ]
    assert book.current("vit") == UnitPrice(300) and book.current("unknown") == UnitPrice()


@pytest.mark.postgres
def test_replicas_syncing_the_same_price_at_once_add_one_row() -> None:
    """The second replica syncs while the first has read the book but not yet added its row: it must
    wait for the first and then find the price unchanged (else both add a row)."""
    with fresh_postgres_database(postgres_url_or_skip()) as url:
        engine = create_db_engine(url)
        upgrade(engine)
        sessions = session_factory(engine)
        answers: dict[str, list[str]] = {}
        second = threading.Thread(
            target=lambda: answers.update(second=PriceBook(sessions).sync([("vit", UnitPrice(200))]))
        )

        def first_adds_its_row_now() -> datetime:
            second.start()
            deadline = time.monotonic() + 30
            # until the second has finished (no lock: it raced us) or is waiting on our lock
            while second.is_alive() and not _waiting_on_prices(engine):
                assert time.monotonic() < deadline, "the second sync neither finished nor waited"
            return datetime.now(UTC)

        try:
            answers["first"] = PriceBook(sessions, now=first_adds_its_row_now).sync([("vit", UnitPrice(200))])
            second.join(timeout=30)
            assert answers == {"first": ["vit"], "second": []}
            assert [r.per_input_micro for r in PriceBook(sessions).history("vit")] == [200]
        finally:
            engine.dispose()


def _waiting_on_prices(engine: Engine) -> bool:
    with engine.connect() as connection:
        query = "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'prices'::regclass"
        return bool(connection.execute(text(query)).scalar())


def test_a_model_registered_after_start_up_is_priced_by_its_manifest_until_listed(
    sessions: sessionmaker[Session],
) -> None:
    manifests = {"ft-vit-1": UnitPrice(200, 7)}
    book = PriceBook(
        sessions, unlisted=lambda model, kind: manifests.get(model) if kind == INFERENCE else None
    )
    book.sync([("vit", UnitPrice(200))])
    assert book.current("ft-vit-1") == UnitPrice(200, 7)  # fine-tuned since: its base's price
    assert book.current("unknown") == UnitPrice()
    assert book.history("ft-vit-1") == []  # the next start-up writes its row
    assert book.current("ft-vit-1", TRAINING) == UnitPrice()


def test_inference_and_training_prices_are_versioned_apart(sessions: sessionmaker[Session]) -> None:
    book = PriceBook(sessions)
    assert book.sync([("vit", UnitPrice(200))]) == ["vit"]
    assert book.sync([("vit", UnitPrice(3, 40_000))], TRAINING) == ["vit"]
    again = PriceBook(sessions)  # a restart with the same manifest adds nothing, kind by kind
    assert (
        again.sync([("vit", UnitPrice(200))]) == []
        and again.sync([("vit", UnitPrice(3, 40_000))], TRAINING) == []
    )
    assert again.current("vit") == UnitPrice(200) and again.current("vit", TRAINING) == UnitPrice(3, 40_000)
    assert [r.per_input_micro for r in again.history("vit")] == [200]
    assert [r.per_input_micro for r in again.history("vit", TRAINING)] == [3]
