"""The caller a key identifies (`Principal`), and its access rules: scopes, which models it may
see and use."""

from __future__ import annotations

from dataclasses import dataclass

from service.errors import NotFound, PermissionDenied


@dataclass(frozen=True)
class Principal:
    """Who is calling: their key, tenant, scopes, the models they may use (None: every public
    model), and the limits that apply to them (None: no limit of that kind)."""

    key_id: str
    tenant: str
    scopes: frozenset[str]
    models: frozenset[str] | None = None
    tenant_id: str | None = None
    # the lists `models` was made from (the key's, the tenant's), each checked for fine-tuned models
    model_lists: tuple[frozenset[str], ...] = ()
    rate_limit_rps: float | None = None  # the key's own bucket
    tenant_rate_limit_rps: float | None = None  # the bucket all the tenant's keys share
    max_concurrency: int | None = None  # the tenant's requests in flight
    monthly_quota_inputs: int | None = None
    weight: float = 1.0  # the tenant's share of a contended model's batches

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    def require_scope(self, scope: str) -> None:
        if scope not in self.scopes and not self.is_admin:
            raise PermissionDenied(f"this key lacks the {scope!r} scope")

    def can_see(self, owner: str | None) -> bool:
        """The one visibility rule: public models (no owner) for all, private ones for their tenant only."""
        return owner is None or owner == self.tenant_id

    def allowed(self, model: str, owner: str | None = None, base: str | None = None) -> bool:
        """Whether the key's and tenant's model lists let it use `model`. A tenant's fine-tuned model
        (one with an `owner`) is allowed where the list names it or the public model it was
        trained from (`base`): allowing a base allows the tenant's own versions of it."""
        if self.models is None or model in self.models:
            return True
        if owner is None or base is None:
            return False
        return all(model in allow or base in allow for allow in self.model_lists or (self.models,))

    def may_use(self, model: str, owner: str | None = None, base: str | None = None) -> bool:
        """Whether `model` belongs in this caller's models list."""
        return self.can_see(owner) and self.allowed(model, owner, base)

    def require_model(self, model: str, owner: str | None = None, base: str | None = None) -> None:
        """404 for a model this caller may not even know of (another tenant's), 403 for one it may not use."""
        if not self.can_see(owner):
            raise NotFound(f"model {model!r} not found")
        if not self.allowed(model, owner, base):
            raise PermissionDenied(f"this key is not allowed to use model {model!r}")
