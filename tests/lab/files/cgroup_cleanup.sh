# iservice lab: end every process of the lab's cgroup ($1; the services' sessions
# included) and remove it, in a private mount namespace with its own cgroup2 mount (the
# host may have none mounted).
mount -t cgroup2 none /sys/fs/cgroup || exit 1
d=/sys/fs/cgroup/$1
[ -d "$d" ] || exit 0
echo 1 > "$d/cgroup.kill"
i=0
while grep -q "populated 1" "$d/cgroup.events" && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
find "$d" -depth -type d -exec rmdir {} +
