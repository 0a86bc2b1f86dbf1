"""``python -m market_chat_async.cli``: the ``market-chat`` command line."""

import sys

from .main import main

if __name__ == "__main__":
    sys.exit(main())
