"""A deterministic cabinet of many chats, for tests and benchmarks that need volume.

Message counts per chat follow a log-normal law, taken at evenly spaced quantiles (so the shape
does not depend on luck) and then shuffled by the seed: the mean is about 12, the median 3 or
4, and one chat in a few hundred has more than 300 messages, the long tail a bulk export meets.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import attrs

from ._data import iso_time

_MU: Final = 1.25  # log-normal location and scale of the message count (mean ~ 12)
_SIGMA: Final = 1.6
_MAX_MESSAGES: Final = 5000
_START: Final = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
_NAMES: Final = ("Анна", "Иван", "Мария", "Пётр", "Ольга", "Алексей", "Елена", "Дмитрий")


@attrs.frozen
class ChatSeed:
    """One chat of a :class:`Corpus`: the arguments of :meth:`MarketTestServer.add_chat`.

    >>> seed = corpus(seed=3, chats=1).chats[0]
    >>> seed.arguments()["chat_id"], len(seed.messages) >= 1
    (1, True)
    """

    chat_id: int
    context_type: str
    context_id: int | None
    order_id: int | None
    type: str
    status: str
    customer: Mapping[str, str]
    created_at: str
    updated_at: str
    messages: tuple[Mapping[str, Any], ...]

    def arguments(self) -> dict[str, Any]:
        """Keyword arguments for :meth:`MarketTestServer.add_chat`."""
        return attrs.asdict(self, recurse=False)


@attrs.frozen
class Corpus:
    """Chats and messages made by :func:`corpus`; install with :meth:`MarketTestServer.load`.

    >>> small = corpus(seed=1, chats=10)
    >>> len(small.chats), small.total_messages == sum(small.message_counts())
    (10, True)
    """

    chats: tuple[ChatSeed, ...]

    @property
    def total_messages(self) -> int:
        """Messages in all chats together."""
        return sum(len(chat.messages) for chat in self.chats)

    def message_counts(self) -> list[int]:
        """Messages per chat, in chat order."""
        return [len(chat.messages) for chat in self.chats]


def message_counts(chats: int) -> list[int]:
    """The heavy-tailed message counts of ``chats`` chats, smallest first (before shuffling).

    >>> counts = message_counts(1000)
    >>> 10 <= sum(counts) / len(counts) <= 14, counts[-1] > 300, counts[0] >= 1
    (True, True, True)
    """
    normal = statistics.NormalDist()
    return [
        min(
            _MAX_MESSAGES, max(1, round(math.exp(_MU + _SIGMA * normal.inv_cdf((i + 0.5) / chats))))
        )
        for i in range(chats)
    ]


def corpus(*, seed: int = 0, chats: int = 1000) -> Corpus:
    """``chats`` chats with contexts, types, statuses, customers and messages, all from ``seed``.

    About 70 % of chats are about an order, 20 % about a return, 10 % direct; one in ten is an
    arbitrage. Messages alternate between customer and partner (now and then the Market or
    support), a tenth carry a file; ``messageId`` grows through the cabinet, ``createdAt``
    through each chat, and a chat's status follows its last message.

    >>> a, b = corpus(seed=7, chats=50), corpus(seed=7, chats=50)
    >>> a == b, a == corpus(seed=8, chats=50)
    (True, False)
    """
    if chats < 0:
        raise ValueError(f"chats must not be negative, got {chats}")
    rng = random.Random(seed)
    counts = message_counts(chats)
    rng.shuffle(counts)
    next_message_id = 1
    made = []
    for index, count in enumerate(counts):
        chat_id = index + 1
        roll = rng.random()
        context_type = "ORDER" if roll < 0.7 else "RETURN" if roll < 0.9 else "DIRECT"
        created = _START + rng.uniform(0, 300 * 86_400)
        at = created
        messages = []
        sender = "CUSTOMER"
        for _ in range(count):
            at += rng.uniform(30, 6 * 3600)
            message: dict[str, Any] = {
                "messageId": next_message_id,
                "createdAt": iso_time(at),
                "sender": sender,
            }
            if rng.random() < 0.1:
                message["payload"] = [
                    {
                        "name": f"photo-{next_message_id}.jpg",
                        "url": f"https://market-files.invalid/{chat_id}/{next_message_id}/1",
                        "size": rng.randint(10_000, 4_000_000),
                    }
                ]
            else:
                message["message"] = f"Сообщение {next_message_id} в чате {chat_id}"
            messages.append(message)
            next_message_id += rng.randint(1, 3)
            sender = rng.choices(
                ("CUSTOMER", "PARTNER", "MARKET", "SUPPORT"),
                (10, 10, 1, 1) if sender != "CUSTOMER" else (2, 16, 1, 1),
            )[0]
        arbitrage = rng.random() < 0.1
        last = messages[-1]["sender"] if messages else "CUSTOMER"
        if rng.random() < 0.2:
            status = "FINISHED"
        elif arbitrage:
            status = "WAITING_FOR_ARBITER"
        else:
            status = "WAITING_FOR_CUSTOMER" if last == "PARTNER" else "WAITING_FOR_PARTNER"
        made.append(
            ChatSeed(
                chat_id=chat_id,
                context_type=context_type,
                context_id=None if context_type == "DIRECT" else 40_000_000 + chat_id,
                order_id=30_000_000 + chat_id if context_type == "RETURN" else None,
                type="ARBITRAGE" if arbitrage else "CHAT",
                status=status,
                customer={
                    "name": rng.choice(_NAMES),
                    "publicId": f"{rng.getrandbits(40):010x}",
                },
                created_at=iso_time(created),
                updated_at=iso_time(at),
                messages=tuple(messages),
            )
        )
    return Corpus(tuple(made))
