"""Many messages at once: known pairs (``stream_messages``, ``get_messages``) fetched the
cheapest way the quotas allow, and a whole cabinet's export (``iter_all_messages``).

* :mod:`._types`: the values handed out (:class:`BulkResult`, :class:`Progress`) and what is
  needed of a client (:class:`MessageSource`), so nothing here imports the client;
* :mod:`._source`: the input, read lazily, numbered, validated, each pair once;
* :mod:`._planner`: which chats are read from history pages and which one message at a time;
* :mod:`._stream`: the workers and the stream of results;
* :mod:`._export`: every chat and its history, streamed.
"""

from ._export import export_messages, iter_all_messages
from ._stream import get_messages, stream_messages
from ._types import (
    STRATEGIES,
    BulkResult,
    MessageSource,
    PairSource,
    Progress,
    ProgressCallback,
    Strategy,
)

__all__ = [
    "STRATEGIES",
    "BulkResult",
    "MessageSource",
    "PairSource",
    "Progress",
    "ProgressCallback",
    "Strategy",
    "export_messages",
    "get_messages",
    "iter_all_messages",
    "stream_messages",
]
