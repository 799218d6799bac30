"""The price book: manifest prices as integer micro-units (1e-6 of the currency), versioned.

At start-up each model's manifest price is compared with its newest row in `prices`; when it
differs a new row, effective now, is added. Inference and training (fine-tuning on a base model)
are priced apart: each row has a `kind`. An event stores the unit prices it was charged, so
old usage keeps its old price whatever the book says later.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from service.db.models import PriceRow
from service.serving.manifests import Price

MICRO = 1_000_000


def to_micro(amount: float | str | Decimal) -> int:
    """A currency amount as integer micro-units; exact for any decimal written with <= 6 places
    (a float goes through its shortest repr, so 0.0002 is 200, not 199)."""
    try:
        value = Decimal(str(amount)) if not isinstance(amount, Decimal) else amount
    except InvalidOperation as exc:
        raise ValueError(f"not a price: {amount!r}") from exc
    if value < 0:
        raise ValueError(f"a price cannot be negative: {amount!r}")
    return int((value * MICRO).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def format_micro(micro: int) -> str:
    """Micro-units as a decimal string with six places, for display: 1234 -> '0.001234'."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    return f"{sign}{whole}.{frac:06d}"


@dataclass(frozen=True)
class UnitPrice:
    per_input_micro: int = 0
    per_compute_second_micro: int = 0

    def amount(self, inputs: int, compute_us: int) -> int:
        """What a request costs, in micro-units: inputs times unit price plus its compute time times the
        per-second price, the latter rounded half up to a whole micro-unit. Integers only."""
        compute = (self.per_compute_second_micro * compute_us + MICRO // 2) // MICRO
        return self.per_input_micro * inputs + compute

    def discounted(self, fraction: float) -> UnitPrice:
        """These prices less `fraction` (0..1) of each, rounded half up to a whole micro-unit."""
        keep = Decimal(1) - Decimal(str(fraction))
        return UnitPrice(
            int((self.per_input_micro * keep).quantize(Decimal(1), rounding=ROUND_HALF_UP)),
            int((self.per_compute_second_micro * keep).quantize(Decimal(1), rounding=ROUND_HALF_UP)),
        )


FREE = UnitPrice()
INFERENCE, TRAINING, BATCH = "inference", "training", "batch"


def manifest_prices(price: Price) -> dict[str, UnitPrice]:
    """A manifest's `price:` as the unit prices of each kind: inference (per input, per compute
    second), training on this model as the base (per sample trained, per device second), and
    inputs of batch jobs (inference's prices less `batch_discount`)."""
    inference = UnitPrice(to_micro(price.per_image), to_micro(price.per_compute_second))
    return {
        INFERENCE: inference,
        TRAINING: UnitPrice(to_micro(price.per_training_sample), to_micro(price.per_training_second)),
        BATCH: inference.discounted(price.batch_discount),
    }


class PriceBook:
    """The current price of each model (kept in memory: pricing a request reads no database)."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        unlisted: Callable[[str, str], UnitPrice | None] = lambda model, kind: None,
    ) -> None:
        self._sessions = sessions
        self._now = now
        self._current: dict[tuple[str, str], UnitPrice] = {}
        # the price (model, kind) of a model registered after start-up (fine-tuned, here or on
        # another replica): its manifest's, until the next start-up writes it into the book
        self._unlisted = unlisted

    def sync(self, prices: Iterable[tuple[str, UnitPrice]], kind: str = INFERENCE) -> list[str]:
        """Make `prices` the current ones of `kind`; adds a row, effective now, for each model whose
        price changed (or is new). Returns the models that got a new row."""
        changed: list[str] = []
        with self._sessions.begin() as session:
            _lock_prices(session)
            for model, price in prices:
                latest = _latest(session, model, kind)
                if latest is None or (latest.per_input_micro, latest.per_compute_second_micro) != (
                    price.per_input_micro,
                    price.per_compute_second_micro,
                ):
                    session.add(
                        PriceRow(
                            model=model,
                            kind=kind,
                            effective_from=self._now(),
                            per_input_micro=price.per_input_micro,
                            per_compute_second_micro=price.per_compute_second_micro,
                        )
                    )
                    changed.append(model)
                self._current[(model, kind)] = price
        return changed

    def sync_manifests(self, prices: Iterable[tuple[str, Price]]) -> list[str]:
        """`sync` every kind of each model's manifest price; returns `model (kind)` for each new row."""
        by_kind: dict[str, list[tuple[str, UnitPrice]]] = {INFERENCE: [], TRAINING: [], BATCH: []}
        for model, price in prices:
            for kind, unit in manifest_prices(price).items():
                by_kind[kind].append((model, unit))
        return [f"{model} ({kind})" for kind, units in by_kind.items() for model in self.sync(units, kind)]

    def current(self, model: str, kind: str = INFERENCE) -> UnitPrice:
        price = self._current.get((model, kind))
        if price is None:
            price = self._unlisted(model, kind) or FREE
        return price

    def history(self, model: str, kind: str = INFERENCE) -> list[PriceRow]:
        with self._sessions() as session:
            query = select(PriceRow).where(PriceRow.model == model, PriceRow.kind == kind)
            return list(session.scalars(query.order_by(PriceRow.id)))


def _lock_prices(session: Session) -> None:
    """Replicas starting at once read and add price rows one after another: without this, two
    would each find no row (or the old price) and both add one. Readers are not blocked.
    SQLite serves one replica only: nothing to order there."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"LOCK TABLE {PriceRow.__tablename__} IN EXCLUSIVE MODE"))


def _latest(session: Session, model: str, kind: str) -> PriceRow | None:
    query = select(PriceRow).where(PriceRow.model == model, PriceRow.kind == kind)
    return session.scalars(query.order_by(PriceRow.id.desc()).limit(1)).first()
