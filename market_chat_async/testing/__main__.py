"""``python -m market_chat_async.testing``."""

from ._cli import main

main()
