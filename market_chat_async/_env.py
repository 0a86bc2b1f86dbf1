"""The environment variables the library and its command line read, named once."""

from __future__ import annotations

__all__ = ["API_KEY_ENV", "BASE_URL_ENV", "DEFAULT_BASE_URL"]

API_KEY_ENV = "YANDEX_MARKET_API_KEY"
"""The Api-Key, when none is passed."""
BASE_URL_ENV = "YANDEX_MARKET_BASE_URL"
"""The API's base URL for the command line's ``--base-url``."""
DEFAULT_BASE_URL = "https://api.partner.market.yandex.ru"
"""Where the Market's partner API lives."""
