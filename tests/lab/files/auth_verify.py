#!/usr/bin/python3
"""iservice lab: openvpn's ``auth-user-pass-verify`` script (``via-file``).

Its settings are in ``<this file>.json`` (``Lab.auth_server_lines`` writes both):
``creds`` (user → password), ``otp`` (a static-challenge answer required, or null),
``challenge`` (answer a right password with a CRV1 dynamic challenge whose expected
answer this is, or null), ``attempts`` (a file: one ``user ok|bad|challenged`` line per
attempt).  argv[1] is openvpn's file: line 1 user, line 2 password.
"""

import base64
import json
import os
import sys

with open(sys.argv[0] + ".json") as f:
    conf = json.load(f)
CREDS, OTP, CHALLENGE = conf["creds"], conf["otp"], conf["challenge"]


def note(user: str, what: str) -> None:
    with open(conf["attempts"], "a") as f:
        f.write(f"{user} {what}\n")


with open(sys.argv[1]) as f:
    user, password = ([*f.read().split("\n"), "", ""])[:2]
otp = None
if password.startswith("CRV1::"):  # the answer to our dynamic challenge
    parts = password.split(":", 4)
    ok = CHALLENGE is not None and parts[2] == "st8" and parts[4] == CHALLENGE
    note(user, "ok" if ok else "bad")
    sys.exit(0 if ok else 1)
if CHALLENGE is not None and CREDS.get(user) == password:
    reason_file = os.environ["auth_failed_reason_file"]  # noqa: SIM112 (openvpn's name)
    with open(reason_file, "w") as f:
        f.write("CRV1:R:st8:" + base64.b64encode(user.encode()).decode()
                + ":Enter the code from your token")
    note(user, "challenged")
    sys.exit(1)
if password.startswith("SCRV1:"):
    _, p64, r64 = ([*password.split(":"), "", ""])[:3]
    password = base64.b64decode(p64).decode()
    otp = base64.b64decode(r64).decode()
ok = CREDS.get(user) == password and (OTP is None or otp == OTP)
note(user, "ok" if ok else "bad")
sys.exit(0 if ok else 1)
