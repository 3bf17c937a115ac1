# iservice lab: the service wrapper's last step, run by sh inside a private mount
# namespace: a 0666 tun node ($1) over /dev/net/tun (the host's node is 0600 and is
# never touched, SPEC §9), then the command in place.
mount --bind "$1" /dev/net/tun && shift && exec "$@"
