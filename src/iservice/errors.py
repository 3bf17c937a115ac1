"""Error numbers on the wire and the error types that carry them.

Whose fault an error is decides its type (the h11 habit):

* ``StartupDataError`` -- the *client* sent a bad startup message or asked for
  something it may not have; it carries the exact reply (code, func, message).
* ``ChannelError`` and subclasses -- *openvpn's side* of the per-session channel
  sent a bad message; each carries the ack it implies (error number, message id).
* ``SettingsError`` -- the *administrator's* settings file is wrong; it names the
  file, the line and the key.
* ``JournalError`` -- the *state directory* cannot take a record (full, read-only,
  damaged); it names the directory, and a change that cannot be journaled is never
  made.  ``JournalDataError``: a record read back is not one iservice writes.
* Anything else escaping a codec or a policy function is a bug in iservice.
"""

from __future__ import annotations

# Service-specific codes of the original (openvpn-msg.h / interactive.c).
ERROR_OPENVPN_STARTUP = 0x20000000
ERROR_STARTUP_DATA = 0x20000001
ERROR_MESSAGE_DATA = 0x20000002
ERROR_MESSAGE_TYPE = 0x20000003

# Win32 numbers used where one fits (the Windows client knows them).
ERROR_SUCCESS = 0
ERROR_ACCESS_DENIED = 5
ERROR_NOT_SUPPORTED = 50
ERROR_INVALID_PARAMETER = 87
ERROR_CANT_WAIT = 0x22A  # "Too many concurrent clients"
ERROR_TIMEOUT = 1460  # "This operation returned because the timeout period expired"
ERROR_GEN_FAILURE = 31  # a DNS or firewall backend failed
ERROR_NOT_FOUND = 1168
ERROR_NOT_ENOUGH_QUOTA = 1816
ERROR_OBJECT_ALREADY_EXISTS = 5010  # openvpn reads this as "route exists"
ERROR_WRITE_PROTECT = 19  # the state directory is read-only: nothing can be journaled
ERROR_DISK_FULL = 112  # the state directory is full: nothing can be journaled


class IServiceError(Exception):
    """Base of every error iservice raises on purpose."""


class StartupDataError(IServiceError):
    """The client's request cannot be served; carries the reply to send.

    ``code`` is the error number of the reply's first line, ``func`` its second
    line, ``message`` its third (empty for the 0x2000000x codes, as in the original).
    """

    def __init__(self, func: str, message: str = "", code: int = ERROR_STARTUP_DATA) -> None:
        super().__init__(f"0x{code:08x}: {func}" + (f": {message}" if message else ""))
        self.code = code
        self.func = func
        self.message = message


class ReplyFormatError(IServiceError):
    """A reply from the service (seen by a client) does not follow SPEC §2."""


class ChannelError(IServiceError):
    """openvpn's side of the channel sent something wrong; ``ack`` tells what to answer."""

    def __init__(self, reason: str, error_number: int, message_id: int = -1) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_number = error_number
        self.message_id = message_id


class MessageDataError(ChannelError):
    """Sizes disagree, a field is malformed or a text field is unterminated."""

    def __init__(self, reason: str, message_id: int = -1) -> None:
        super().__init__(reason, ERROR_MESSAGE_DATA, message_id)


class MessageTypeError(ChannelError):
    """The message type is not one openvpn-msg.h defines."""

    def __init__(self, reason: str, message_id: int = -1) -> None:
        super().__init__(reason, ERROR_MESSAGE_TYPE, message_id)


class MessageTooLargeError(ChannelError):
    """Larger than the largest message type: the session must end (CVE-2024-27459)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, ERROR_MESSAGE_DATA, -1)


class SettingsError(IServiceError):
    """The settings file (or an instance name) is invalid; names where."""

    def __init__(self, reason: str, *, key: str | None = None, line: int | None = None,
                 path: str | None = None) -> None:
        where = []
        if path is not None:
            where.append(path + (f":{line}" if line is not None else ""))
        if key is not None:
            where.append(f"key '{key}'")
        super().__init__((", ".join(where) + ": " if where else "") + reason)
        self.reason = reason
        self.key = key
        self.line = line
        self.path = path


class BackendError(OSError):
    """A backend of the platform failed as a whole (nftables, a resolver): the ack
    carries ``ERROR_GEN_FAILURE``; the errno says what it was."""


class JournalError(IServiceError):
    """The journal cannot record a change (``ack_error`` says why, as the channel's ack
    and the start reply carry it): the change is not made."""

    def __init__(self, reason: str, ack_error: int = ERROR_DISK_FULL) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ack_error = ack_error


class JournalDataError(IServiceError):
    """A journal row is not a record iservice writes (a damaged or foreign file)."""


class StillStuck(Exception):
    """A user's earlier check as the user, given up after its time limit, is still
    waiting for the file system: no new check of that user starts until it has ended
    (``linux/identity.as_fs_user``)."""
