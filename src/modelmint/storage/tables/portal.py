"""Sign-in links to the customer portal (``modelmint.portal``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    ForeignKey,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from modelmint.clock import utcnow
from modelmint.storage.tables.base import Base

__all__ = ["PortalLink"]


class PortalLink(Base):
    """A sign-in link to the customer portal the operator handed out: single use, expiring.

    Only a digest of the link's secret is kept (``portal.links``); signing in sets
    ``used_at`` with one conditional UPDATE, so a link works once.
    """

    __tablename__ = "portal_links"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    secret_digest: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
