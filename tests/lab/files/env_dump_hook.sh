#!/bin/bash
# iservice lab: dump the hook environment (scripts get no PATH: absolute paths).
# Lab.write_env_dump_hook fills in the two settings below.
out=@OUT@
fd=@FD@
n=$(/bin/ls -1 "$out" | /usr/bin/wc -l)
f=$(printf '%s/%03d-%s.env' "$out" "$n" "${script_type:-unknown}")
{
  echo "LAB_UID=$(/usr/bin/id -u)"
  echo "LAB_ARGS=$*"
  echo "LAB_FDS=$(/bin/ls /proc/$$/fd | /usr/bin/tr '\n' ' ')"
  /usr/bin/env
} > "$f"
if [ -n "$fd" ]; then
  if { true >&"$fd"; } 2>/dev/null; then
    echo "$script_type" >&"$fd" && echo LAB_FD_WRITE=ok >> "$f"
  else
    echo LAB_FD_WRITE=closed >> "$f"
  fi
fi
exit 0
