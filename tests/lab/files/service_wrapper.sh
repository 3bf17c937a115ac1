# iservice lab: the service wrapper's last step, run by sh inside a private mount
# namespace: a 0666 tun node ($1) over /dev/net/tun (the host's node is 0600 and is
# never touched, SPEC §9); a cgroup v2 hierarchy (`ip netns exec` remounts /sys without
# one) and the lab's own cgroup ($2), under which the service makes its session cgroups
# (removed with the lab: cgroup_cleanup.sh); then the command in place.
mount --bind "$1" /dev/net/tun || exit 1
cg=$(awk '/ - cgroup2 / {print $5; exit}' /proc/self/mountinfo)
if [ -z "$cg" ]; then mount -t cgroup2 none /sys/fs/cgroup || exit 1; cg=/sys/fs/cgroup; fi
mkdir -p "$cg/$2" && echo $$ > "$cg/$2/cgroup.procs" || exit 1
shift 2
exec "$@"
