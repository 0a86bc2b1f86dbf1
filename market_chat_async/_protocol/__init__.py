"""Sans-I/O: each API method described once, the requests built from it, what answers mean.

Everything here is a pure function of plain values, so each decision (is this a message or an
error? the parallel cap or the quota?) is tested without a server. No HTTP library is imported.

>>> request = message_request(12345, 2, 3)
>>> request.endpoint.method, request.path, dict(request.params)
('GET', '/v2/businesses/12345/chats/message', {'chatId': '2', 'messageId': '3'})
"""

from ._endpoints import (
    CREATE_CHAT,
    DEFAULT_QUOTAS,
    ENDPOINTS,
    GET_CHAT,
    GET_CHAT_HISTORY,
    GET_CHAT_MESSAGE,
    GET_CHATS,
    INT64_MAX,
    MAX_FILE_BYTES,
    MAX_TEXT_LENGTH,
    SEND_FILE,
    SEND_MESSAGE,
    ApiRequest,
    ChatFilters,
    Endpoint,
    FilePart,
    chat_request,
    chats_request,
    create_chat_request,
    history_request,
    message_request,
    send_file_request,
    send_message_request,
    validate_id,
)
from ._responses import (
    ChatsPage,
    HistoryPage,
    RateLimitInfo,
    answer_for,
    check_ok,
    decode,
    decode_chats_page,
    decode_created_chat,
    decode_history_page,
    error_from_response,
    parse_rate_limit,
    rate_limit_reason,
)

__all__ = [
    "CREATE_CHAT",
    "DEFAULT_QUOTAS",
    "ENDPOINTS",
    "GET_CHAT",
    "GET_CHATS",
    "GET_CHAT_HISTORY",
    "GET_CHAT_MESSAGE",
    "INT64_MAX",
    "MAX_FILE_BYTES",
    "MAX_TEXT_LENGTH",
    "SEND_FILE",
    "SEND_MESSAGE",
    "ApiRequest",
    "ChatFilters",
    "ChatsPage",
    "Endpoint",
    "FilePart",
    "HistoryPage",
    "RateLimitInfo",
    "answer_for",
    "chat_request",
    "chats_request",
    "check_ok",
    "create_chat_request",
    "decode",
    "decode_chats_page",
    "decode_created_chat",
    "decode_history_page",
    "error_from_response",
    "history_request",
    "message_request",
    "parse_rate_limit",
    "rate_limit_reason",
    "send_file_request",
    "send_message_request",
    "validate_id",
]
