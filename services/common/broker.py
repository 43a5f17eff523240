"""RabbitMQ: one robust connection per broker user, the `mfa.events` topic exchange, confirmed publishing.

aio-pika's robust connection reconnects by itself and re-declares exchanges, queues and
consumers on the new channel; publishing while the broker is away raises, and the caller
(the outbox relay) keeps the events and tries again. Every publish carries the AMQP
`user_id` of the connection's user, which RabbitMQ validates, so consumers know who sent it
(services/common/producers.py).
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import aio_pika
from aio_pika.abc import AbstractRobustChannel, AbstractRobustConnection, AbstractRobustExchange
from pamqp.commands import Basic

from .db import redact_url
from .events import CONTENT_TYPE
from .logs import get_logger

log = get_logger("broker")
SHORTSTR_MAX = 255  # bytes of UTF-8 in an AMQP shortstr, such as the `correlation_id` property
PARTITION_HEADER = "mfa-partition"  # the outbox partition of the subject; consumers route on it (headers named x-* match nothing)


class BrokerUnreachable(RuntimeError):
    """RabbitMQ cannot be reached at the configured URL."""


class Broker:
    """A robust connection, a confirming publish channel and the topic exchange; build with :meth:`open`."""

    def __init__(
        self, url: str, exchange_name: str, connection: AbstractRobustConnection,
        channel: AbstractRobustChannel, exchange: AbstractRobustExchange,
    ) -> None:
        self.url = url
        self.exchange_name = exchange_name
        self.user = unquote(urlsplit(url).username or "guest")  # AMQP's default login
        self.connection = connection
        self._channel = channel
        self.exchange = exchange

    @classmethod
    async def open(cls, url: str, exchange_name: str = "mfa.events", timeout: float = 10) -> Broker:
        """Connect and declare the exchange; raises BrokerUnreachable on the first failure."""
        try:
            connection = await aio_pika.connect_robust(url, timeout=timeout, reconnect_interval=1)
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
            raise BrokerUnreachable(f"cannot reach RabbitMQ at {redact_url(url)}: {exc}") from exc
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        except BaseException:
            await connection.close()
            raise
        return cls(url, exchange_name, connection, channel, exchange)

    @property
    def connected(self) -> bool:
        return not self.connection.is_closed and not self._channel.is_closed

    async def channel(self, prefetch: int | None = None) -> AbstractRobustChannel:
        """A new channel on the shared connection (consumers take one each)."""
        channel = await self.connection.channel(publisher_confirms=True)
        if prefetch:
            await channel.set_qos(prefetch_count=prefetch)
        return channel

    async def publish_event(
        self, body: bytes, *, event_type: str, event_id: str, correlation_id: str | None = None,
        partition: int | None = None,
    ) -> None:
        """Publish one encoded event as this connection's user and wait for the broker's confirm.

        `partition` (the outbox partition of its subject) goes into the `mfa-partition` header, by
        which partitioned consumer queues keep one account's events on one queue.
        """
        if not self.connected:
            raise ConnectionError("broker not connected")
        # Straight to the underlying aiormq channel with pamqp's properties: building an
        # aio_pika.Message cost about a fifth of each publish and adds nothing to an encoded body.
        properties = Basic.Properties(
            content_type=CONTENT_TYPE,
            message_id=event_id,
            correlation_id=_as_property(correlation_id, event_id),
            delivery_mode=2,  # persistent
            message_type=event_type,
            user_id=self.user,
            headers=None if partition is None else {PARTITION_HEADER: partition},
        )
        channel = await self._channel.get_underlay_channel()
        # mandatory=False: an event type nobody consumes yet is dropped by the broker, not returned.
        # A Nack raises aiormq's DeliveryError; the relay then keeps the batch.
        await channel.basic_publish(
            body, exchange=self.exchange_name, routing_key=event_type, properties=properties, mandatory=False, timeout=10
        )

    async def close(self) -> None:
        if not self.connection.is_closed:
            await self.connection.close()


def _as_property(correlation_id: str | None, event_id: str) -> str | None:
    """The id when it fits the AMQP property, else None: the body's `correlationid` keeps it whole.

    A correlation id that came in on an upstream event can be any string; one pamqp cannot
    encode would fail the publish again on every retry and hold up the whole outbox.
    """
    if correlation_id is None:
        return None
    try:
        if len(correlation_id.encode()) <= SHORTSTR_MAX:
            return correlation_id
    except UnicodeEncodeError:
        pass
    log.warning("correlation_id_not_a_property", event_id=event_id, length=len(correlation_id))
    return None
