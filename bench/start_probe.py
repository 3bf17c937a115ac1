"""bench/profile_start.py's service wrapper: ``iservice serve`` with the start path's
steps time-stamped.

Run as the service: ``python start_probe.py DIR serve --settings …``.  Before the service
starts, the functions a start goes through are wrapped so that each call records
(step, thread, begin, end) in ``time.monotonic()`` (the clock the user's driver stamps
its connect and its reply with).  When the harness creates ``DIR/req-K``, the events
recorded since the previous request are written to ``DIR/resp-K`` (JSON).
Bench only: the service itself has no such hook.  The wrappers cost ~1-2 µs a call.
"""

import functools
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

EVENTS: list[tuple[str, str, float, float]] = []
_lock = threading.Lock()


def wrap(owner: Any, attr: str, step: str | None = None) -> None:
    fn = getattr(owner, attr)
    name = step or attr
    clock = time.monotonic

    if _is_coroutine(fn):
        @functools.wraps(fn)
        async def awrapper(*a: Any, **kw: Any) -> Any:
            t0 = clock()
            try:
                return await fn(*a, **kw)
            finally:
                EVENTS.append((name, threading.current_thread().name, t0, clock()))
        setattr(owner, attr, awrapper)
        return

    @functools.wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> Any:
        t0 = clock()
        try:
            return fn(*a, **kw)
        finally:
            label = name
            if name == "audit" and len(a) > 1:
                label = f"audit {a[1]}"
            EVENTS.append((label, threading.current_thread().name, t0, clock()))
    setattr(owner, attr, wrapper)


def _is_coroutine(fn: Any) -> bool:
    import inspect
    return inspect.iscoroutinefunction(fn)


def install() -> None:
    from iservice import audit, journal, monitor, server, session
    from iservice.effects import tun as tun_effect
    from iservice.linux import cgroup, identity, launch, netlink, spawn, tun
    wrap(session.Session, "run", "session task")
    wrap(session.Session, "_read_startup", "read startup message")
    wrap(session.Session, "_validate", "validate (all)")
    wrap(session.Session, "_launch", "launch (all, loop)")
    wrap(session.Session, "_after_reply", "after reply (log file, start time)")
    wrap(identity, "peer_credentials", "accept: peer credentials")
    wrap(identity, "user_identity", "user and group databases")
    wrap(identity, "is_admin", "is_admin")
    wrap(identity, "_as_fs_user", "as-user thread (loop's wait)")
    wrap(identity, "_become_fs_user", "as-user: credential switch")
    wrap(session, "validate_options", "as-user: validate_options")
    wrap(session, "read_option_facts", "as-user: option facts")
    wrap(audit, "record", "audit")
    wrap(server.Server, "check_session_limit", "session limit")
    wrap(monitor.Monitor, "submit", "monitor submit")
    wrap(monitor.Monitor, "_start", "monitor: start (all)")
    wrap(journal.Journal, "new_session", "journal: new session")
    wrap(journal.Journal, "record", "journal: record")
    wrap(journal.Journal, "update", "journal: update")
    wrap(journal.Journal, "update_session_info", "journal: update info")
    wrap(journal._Transaction, "__enter__", "journal: BEGIN")
    wrap(journal._Transaction, "__exit__", "journal: COMMIT")
    wrap(cgroup.Cgroups, "create", "cgroup mkdir")
    wrap(cgroup.Cgroups, "open_dir", "cgroup open dir")
    wrap(tun_effect, "create", "tun (all)")
    wrap(tun, "_create", "tun: create+owner+alias+persist")
    wrap(netlink.Rtnl, "link_set", "rtnl link_set")
    wrap(launch, "start_openvpn", "spawn (all)")
    wrap(launch.subprocess, "Popen", "spawn: Popen")  # the fallbacks (setpriv, no helper)
    wrap(spawn, "spawn", "spawn: posix_spawn")


def serve_requests(directory: Path) -> None:
    k = 0
    while True:
        if (directory / f"req-{k}").exists():
            with _lock:
                events = list(EVENTS)
                del EVENTS[: len(events)]
            tmp = directory / f"resp-{k}.tmp"
            tmp.write_text(json.dumps(events))
            os.rename(tmp, directory / f"resp-{k}")
            k += 1
        time.sleep(0.02)


directory = Path(sys.argv.pop(1))
install()
threading.Thread(target=serve_requests, args=(directory,), name="bench-probe",
                 daemon=True).start()
from iservice.cli import main  # noqa: E402

sys.argv[0] = "iservice"
sys.exit(main())
