"""``market-chat``: Market chats from a terminal.

::

    market-chat get     --business-id 12345 --chat-id 67 --message-id 89
    market-chat fetch   --business-id 12345 --input ids.csv --output messages.jsonl
    market-chat chats   --business-id 12345 --status WAITING_FOR_PARTNER
    market-chat history --business-id 12345 --chat-id 67 --from-message-id 89
    market-chat send    --business-id 12345 --chat-id 67 --text "Your order ships today."
    market-chat serve   --port 8080 --output messages.jsonl
    market-chat queue   list
    market-chat demo
    market-chat completion bash

Every message is written as one JSON object in the API's own shape (``messageId``,
``createdAt``, ``sender``, ``message``, ``payload``, and any field the service adds later;
``createdAt`` in ISO 8601 with the offset the API gave) with ``chatId`` put first, since the
API's message object does not say which chat it belongs to; ``serve``, which can receive for
several cabinets, adds ``businessId`` too. ``chats`` writes each chat in the API's shape.

``fetch`` reads CSV with the header ``chat_id,message_id`` or JSON lines
(``{"chat_id": 67, "message_id": 89}``; ``chatId`` / ``messageId`` too, so an output file is a
valid input), chosen by the extension (``.csv``; ``.jsonl``, ``.ndjson``, ``.json``) or else by
the first line. Messages are appended to the output in the order they arrive, one whole line
per write, so a killed run leaves a valid file; running the same command again fetches only the
pairs not in the output yet. Failures (and bad input rows, with their line numbers) go to the
errors file, rewritten by each run: it lists what is still missing after the last one.

Exit status: 0 when everything was done, 1 for a runtime failure (some pair failed or an input
row was bad, the rest still done; an API error; a file or stdout that cannot be written), 2 for
a usage error, found before anything is written (no key, unreadable input, an errors file that
is the output, ...), 130 on Ctrl-C and 143 on SIGTERM. The API key is read from
``YANDEX_MARKET_API_KEY`` unless ``--api-key`` is given, and is never printed.

The package, one module per concern: :mod:`.parser` (the parser and the list of commands),
:mod:`.options` (what commands share, and the command-module convention), :mod:`.inputs`,
:mod:`.outputs`, :mod:`.progress`, :mod:`.status`, :mod:`.main`, and one module per command.
"""

from .inputs import parse_id
from .main import main
from .options import API_KEY_ENV, BASE_URL_ENV
from .outputs import json_line, message_record
from .parser import build_parser

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "build_parser",
    "json_line",
    "main",
    "message_record",
    "parse_id",
]
