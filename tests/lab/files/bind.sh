# iservice lab: bind-mount $1 over $2 in the service's private mount namespace, then
# run the rest of the command line in place.
mount --bind "$1" "$2" && shift 2 && exec "$@"
