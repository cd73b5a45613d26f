"""The order domain's tables: products, orders, their lines and the stock ledger.

The ledger (`stock_movements`) makes stock auditable: for every SKU,
``initial stock + sum(delta) == current stock``, and at most one movement exists
per (order, SKU), so a redelivered order can never move stock twice.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    """The declarative base of every table of the order domain."""


class OrderStatus(enum.StrEnum):
    """Where an order is in its life; ``accepted`` and ``pending`` are open, the rest terminal.

    ``accepted``: stored by the web app's transaction (`tasks.intake`), no worker
    has seen it yet. ``pending``: a worker recorded it and is deciding it.
    """

    PENDING = "pending"
    CONFIRMED = "confirmed"
    REJECTED = "rejected"
    FAILED = "failed"
    ACCEPTED = "accepted"


TERMINAL = frozenset({OrderStatus.CONFIRMED, OrderStatus.REJECTED, OrderStatus.FAILED})
#: Not decided yet: a relay may have to (re)publish these.
OPEN = frozenset({OrderStatus.ACCEPTED, OrderStatus.PENDING})


class Product(Base):
    """A SKU on sale; ``fence`` is the highest lock fence that ever wrote its stock.

    ``fence_token`` is a digest of the token of the lease that wrote it with that
    fence: a different lease with an equal fence is refused (migration 0004).
    """

    __tablename__ = "products"
    __table_args__ = (CheckConstraint("stock >= 0", name="stock_not_negative"),)

    sku: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    stock: Mapped[int] = mapped_column(Integer)
    initial_stock: Mapped[int] = mapped_column(Integer)
    fence: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    fence_token: Mapped[str | None] = mapped_column(String(16), default=None)


class Order(Base):
    """An order; its id is the producer's idempotency key."""

    __tablename__ = "orders"
    # Only open orders are looked up by status (migration 0006): decided ones,
    # nearly every row, stay out of these indexes.
    __table_args__ = (
        Index(
            "ix_orders_pending",
            "created_at",
            "id",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        Index(
            "ix_orders_accepted",
            "created_at",
            postgresql_where=text("status = 'accepted'"),
            sqlite_where=text("status = 'accepted'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[OrderStatus] = mapped_column(
        Enum(OrderStatus, name="order_status", values_callable=lambda e: [m.value for m in e])
    )
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    payload_hash: Mapped[str] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    lock_wait_ms: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    # The intake record and its relay (tasks.intake, tasks.relay): when the order's
    # message was last published (NULL: never, or that publish failed), when a
    # worker last took a delivery of it, and how often the relay published it.
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), default=None)
    delivered_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    republications: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    items: Mapped[list[OrderItem]] = relationship(
        back_populates="order", order_by="OrderItem.sku", lazy="selectin"
    )


class OrderItem(Base):
    """One line of an order's cart."""

    __tablename__ = "order_items"
    __table_args__ = (CheckConstraint("quantity > 0", name="quantity_positive"),)

    order_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("orders.id", ondelete="CASCADE"), primary_key=True
    )
    sku: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    quantity: Mapped[int] = mapped_column(Integer)

    order: Mapped[Order] = relationship(back_populates="items")


class StockMovement(Base):
    """The ledger: one stock change of one SKU caused by one order."""

    __tablename__ = "stock_movements"
    __table_args__ = (UniqueConstraint("order_id", "sku", name="one_movement_per_order_sku"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    order_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("orders.id", ondelete="RESTRICT"))
    sku: Mapped[str] = mapped_column(ForeignKey("products.sku", ondelete="RESTRICT"), index=True)
    delta: Mapped[int] = mapped_column(Integer)
    fence: Mapped[int | None] = mapped_column(BigInteger, default=None)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


# Core tables, for the hot path: Core statements skip the ORM's bulk machinery.
PRODUCTS: Table = Product.__table__  # type: ignore[assignment]
ORDERS: Table = Order.__table__  # type: ignore[assignment]
ORDER_ITEMS: Table = OrderItem.__table__  # type: ignore[assignment]
STOCK_MOVEMENTS: Table = StockMovement.__table__  # type: ignore[assignment]
