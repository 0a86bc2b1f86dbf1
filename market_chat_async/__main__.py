"""``python -m market_chat_async``: the ``market-chat`` command line."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
