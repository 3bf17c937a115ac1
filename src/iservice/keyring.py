"""Saved credentials in the user's Secret Service keyring (``connect --save-credentials``).

The freedesktop Secret Service API over the session D-Bus, with jeepney (already
iservice's D-Bus library: no new dependency).  One item per profile, in the default
collection: the attributes say what it is for (``application = iservice``, the
instance and the profile) and carry the username (not a secret); the secret is the
password alone.  One-time passwords, challenge answers and key passphrases are never
stored (``connect`` never hands them here).

The session is opened with the ``plain`` algorithm: the secret travels over the
user's own session bus (a socket only the user can reach), as libsecret does by default
on a local bus.  A locked keyring that would need an unlock prompt is reported
(``KeyringError``), not waited for: ``connect`` then simply asks.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

__all__ = ["Credentials", "KeyringError", "SecretService", "attributes"]

BUS_NAME = "org.freedesktop.secrets"
SERVICE_PATH = "/org/freedesktop/secrets"
SERVICE_IFACE = "org.freedesktop.Secret.Service"
COLLECTION_IFACE = "org.freedesktop.Secret.Collection"
ITEM_IFACE = "org.freedesktop.Secret.Item"
TIMEOUT = 5.0


class KeyringError(Exception):
    """No Secret Service, a locked keyring, or a refused call; the message says which."""


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:  # never in a traceback or a log
        return f"Credentials(username={self.username!r}, password=<hidden>)"


def attributes(profile: str, instance: str = "") -> dict[str, str]:
    """What an item is for (searchable, not secret)."""
    return {"application": "iservice", "service": f"iservice{instance}", "profile": profile}


class SecretService:
    """A connection to the user's Secret Service (``open``), closed with ``close``."""

    def __init__(self, conn: Any) -> None:
        from jeepney import DBusAddress
        self._conn = conn
        self._service = DBusAddress(SERVICE_PATH, bus_name=BUS_NAME, interface=SERVICE_IFACE)
        _, self._session = self._call(self._service, "OpenSession", "sv", ("plain", ("s", "")))

    @classmethod
    def open(cls) -> SecretService:
        if not os.environ.get("DBUS_SESSION_BUS_ADDRESS"):
            raise KeyringError("no session D-Bus (DBUS_SESSION_BUS_ADDRESS is not set)")
        try:
            from jeepney.io.blocking import open_dbus_connection
            conn = open_dbus_connection(bus="SESSION")
        except Exception as exc:  # jeepney raises several kinds; all mean "no bus"
            raise KeyringError(f"cannot reach the session D-Bus: {exc}") from None
        try:
            return cls(conn)
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close()

    def __enter__(self) -> SecretService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls ----------------------------------------------------------------

    def _call(self, address: Any, method: str, signature: str | None = None,
              body: tuple[Any, ...] = ()) -> tuple[Any, ...]:
        from jeepney import DBusErrorResponse, MessageType, new_method_call
        msg = new_method_call(address, method, signature, body)
        try:
            reply = self._conn.send_and_get_reply(msg, timeout=TIMEOUT)
        except TimeoutError:
            raise KeyringError(f"the Secret Service did not answer {method}") from None
        if reply.header.message_type == MessageType.error:
            try:
                raise DBusErrorResponse(reply)
            except DBusErrorResponse as exc:
                if exc.name == "org.freedesktop.DBus.Error.ServiceUnknown":
                    raise KeyringError("no Secret Service on the session bus (a keyring "
                                       "such as gnome-keyring or KeePassXC)") from None
                raise KeyringError(f"{method}: {exc.name}: {exc.data}") from None
        result: tuple[Any, ...] = reply.body
        return result

    def _addr(self, path: str, iface: str) -> Any:
        from jeepney import DBusAddress
        return DBusAddress(path, bus_name=BUS_NAME, interface=iface)

    def _unlocked(self, paths: list[str]) -> list[str]:
        """Unlock what can be unlocked without a prompt."""
        if not paths:
            return []
        unlocked, prompt = self._call(self._service, "Unlock", "ao", (paths,))
        if prompt != "/":
            raise KeyringError("the keyring is locked (unlock it, e.g. by logging in to the "
                               "desktop, then try again)")
        return list(unlocked)

    def _items(self, attrs: dict[str, str]) -> list[str]:
        unlocked, locked = self._call(self._service, "SearchItems", "a{ss}", (attrs,))
        return list(unlocked) + self._unlocked(list(locked))

    # -- the API --------------------------------------------------------------

    def lookup(self, attrs: dict[str, str]) -> Credentials | None:
        """The newest saved credentials with ``attrs``, or None."""
        items = self._items(attrs)
        if not items:
            return None
        (secrets,) = self._call(self._service, "GetSecrets", "aoo", (items, self._session))
        props = self._addr(items[0], "org.freedesktop.DBus.Properties")
        ((_, item_attrs),) = self._call(props, "Get", "ss", (ITEM_IFACE, "Attributes"))
        _session, _params, value, _type = secrets[items[0]]
        try:
            password = bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return None
        return Credentials(str(item_attrs.get("username", "")), password)

    def store(self, attrs: dict[str, str], label: str, creds: Credentials) -> None:
        """Save ``creds`` under ``attrs`` in the default collection (replacing an item
        with the same attributes)."""
        (collection,) = self._call(self._service, "ReadAlias", "s", ("default",))
        if collection == "/":
            raise KeyringError("the keyring has no default collection")
        self._unlocked([collection])
        # the username is an attribute; the replace flag matches on the attributes
        for old in self._items(attrs):
            self._call(self._addr(old, ITEM_IFACE), "Delete")
        props = {
            "org.freedesktop.Secret.Item.Label": ("s", label),
            "org.freedesktop.Secret.Item.Attributes": ("a{ss}", {**attrs,
                                                                 "username": creds.username}),
        }
        secret = (self._session, b"", creds.password.encode("utf-8"), "text/plain")
        _item, prompt = self._call(self._addr(collection, COLLECTION_IFACE), "CreateItem",
                                   "a{sv}(oayays)b", (props, secret, True))
        if prompt != "/":
            raise KeyringError("the keyring asked for a prompt to save the item")

    def delete(self, attrs: dict[str, str]) -> int:
        """Remove every item with ``attrs``; how many there were."""
        items = self._items(attrs)
        for item in items:
            (prompt,) = self._call(self._addr(item, ITEM_IFACE), "Delete")
            if prompt != "/":
                raise KeyringError("the keyring asked for a prompt to delete the item")
        return len(items)
