"""openvpn's script hook: forwards openvpn's environment to the service.

The fallback to the plugin (``hook = script``, or no compiler at install): iservice
runs openvpn with ``--ifconfig-noexec --route-noexec`` and this hook as ``--up``,
``--route-up``, ``--route-pre-down`` and ``--down``.  It runs as the user (no
privileges), inherits the session channel as descriptor ``argv[1]``, and does exactly
what the plugin does: sends its whole environment (``os.environb``) for the event
``script_type`` names as ``ISERVICE_ENV`` pieces (``wire.msg.env_chunks``), waits for
the service's one answer (``ISERVICE_ENV_RESULT``) and exits 1 when the service
refused anything, so openvpn reports the failure (an ``--up`` failure stops openvpn).
The service makes the requests (``produce.py``) and checks each of them.
"""

from __future__ import annotations

import os
import random
import selectors
import socket
import sys
from collections.abc import Mapping, Sequence

from iservice.errors import MessageDataError
from iservice.wire import msg as m

TIMEOUT = 60.0  # seconds per wait, like the plugin's
EVENTS = {name: event for event, name in m.ENV_EVENTS.items()}


def environment(env: Mapping[bytes, bytes]) -> bytes:
    """``name=value`` strings, each followed by a NUL (openvpn's ``envp``)."""
    return b"".join(k + b"=" + v + b"\0" for k, v in env.items())


def exchange(sock: socket.socket, chunks: Sequence[bytes], message_id: int) -> m.EnvResultMsg:
    """Send the pieces, then wait for the answer with ``message_id`` (an early answer,
    an error, stops the sending).  Raises OSError, ConnectionError, TimeoutError."""
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    i = 0
    try:
        while True:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if i < len(chunks) else 0)
            sel.modify(sock, events)
            ready_list = sel.select(timeout=TIMEOUT)
            if not ready_list:
                raise TimeoutError(f"the service did not answer within {TIMEOUT:.0f} s")
            for _key, ready in ready_list:
                if ready & selectors.EVENT_WRITE:
                    while i < len(chunks):
                        try:
                            sock.send(chunks[i])
                        except BlockingIOError:
                            break
                        i += 1
                if ready & selectors.EVENT_READ:
                    answer = _answer(sock, message_id)
                    if answer is not None:
                        return answer
    finally:
        sel.close()


def _answer(sock: socket.socket, message_id: int) -> m.EnvResultMsg | None:
    """The answer to ``message_id`` among what is queued (an ack: a piece refused)."""
    while True:
        try:
            raw = sock.recv(m.MAX_MESSAGE_SIZE + 1)
        except BlockingIOError:
            return None
        if not raw:
            raise ConnectionError("the service closed the channel")
        if m.peek_message_id(raw) != message_id:
            continue  # a stale answer to an earlier hook
        if len(raw) == m.ACK_SIZE:
            ack = m.decode_ack(raw)
            return m.EnvResultMsg(m.MsgType.ISERVICE_ENV_RESULT, message_id,
                                  ack.error_number, 0, 0, 0)
        return m.decode_env_result(raw)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        fd = int(args[0])
    except (IndexError, ValueError):
        print("iservice-hook: usage: iservice-hook CHANNEL_FD [openvpn's arguments]",
              file=sys.stderr)
        return 2
    event = EVENTS.get(os.environ.get("script_type", ""))  # noqa: SIM112 (openvpn's name)
    if event is None:
        return 0  # not an event iservice serves
    message_id = random.randrange(1, 1 << 30)  # stale answers of an earlier hook never match
    try:
        chunks = m.env_chunks(environment(os.environb), event, message_id)
    except ValueError as exc:
        print(f"iservice-hook: {exc}", file=sys.stderr)
        return 1
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError as exc:
        print(f"iservice-hook: no service channel on fd {fd}: {exc}", file=sys.stderr)
        return 1
    try:
        result = exchange(sock, chunks, message_id)
    except (OSError, MessageDataError) as exc:  # ConnectionError, TimeoutError included
        print(f"iservice-hook: {exc}", file=sys.stderr)
        return 1
    finally:
        sock.close()
    name = m.ENV_EVENTS[event]
    if result.error_number and not result.requests:
        print(f"iservice-hook: {name}: the service refused the environment: error "
              f"0x{result.error_number & 0xFFFFFFFF:08x}", file=sys.stderr)
        return 1
    if result.refused:
        try:
            kind = m.MsgType(result.refused_type).name.lower()
        except ValueError:
            kind = str(result.refused_type)
        print(f"iservice-hook: {name}: {result.refused} of {result.requests} requests refused "
              f"by the service; the first: {kind}, error "
              f"0x{result.error_number & 0xFFFFFFFF:08x}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
