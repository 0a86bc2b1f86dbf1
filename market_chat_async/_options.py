"""How the client's constructor arguments become its settings: the credential to send (an
argument, or the environment's key) and every method's quota over the documented defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping

from ._env import API_KEY_ENV
from ._funnel import Secret
from ._limits import Quota
from ._protocol import DEFAULT_QUOTAS, ENDPOINTS

__all__ = ["credentials", "merged_quotas", "nonblank"]


def credentials(api_key: str | None, oauth_token: str | None) -> Secret:
    """The credential to send: ``api_key``, else ``oauth_token``, else the environment's key.

    >>> credentials("  key  ", None)
    <Api-Key ***>
    >>> credentials(None, "token")
    <Authorization ***>
    """
    if api_key is not None and oauth_token is not None:
        raise ValueError("give either api_key or oauth_token, not both")
    if api_key is None and oauth_token is None:
        api_key = os.environ.get(API_KEY_ENV) or None
    if api_key is not None:
        return Secret("Api-Key", nonblank("api_key", api_key))
    if oauth_token is not None:
        return Secret("Authorization", nonblank("oauth_token", oauth_token), scheme="Bearer")
    raise ValueError(
        f"no credentials: pass api_key=... (or the legacy oauth_token=...), "
        f"or set the {API_KEY_ENV} environment variable"
    )


def nonblank(name: str, value: str) -> str:
    """``value`` stripped; a ``ValueError`` naming ``name`` if nothing is left.

    >>> nonblank("api_key", " k ")
    'k'
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string")
    return value.strip()


def merged_quotas(quota: Quota | None, quotas: Mapping[str, Quota] | None) -> dict[str, Quota]:
    """Every method's quota: :data:`DEFAULT_QUOTAS`, then ``quota`` for getChatMessage, then
    ``quotas`` by operation name (an unknown name is an error).

    >>> merged_quotas(Quota(limit=10), {"getChat": Quota(limit=5)})["getChatMessage"].limit
    10
    """
    merged = dict(DEFAULT_QUOTAS)
    if quota is not None:
        merged["getChatMessage"] = quota
    for name, value in (quotas or {}).items():
        if name not in ENDPOINTS:
            raise ValueError(f"quotas: unknown operation {name!r}; known: {', '.join(ENDPOINTS)}")
        if not isinstance(value, Quota):
            raise TypeError(f"quotas[{name!r}] must be a Quota, not {type(value).__name__}")
        merged[name] = value
    return merged
