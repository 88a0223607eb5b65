#!/bin/sh
# as the official image does: no config file given -> accept clients from other containers
if [ "$1" = "redis-server" ]; then shift; set -- redis-server --protected-mode no "$@"; fi
exec "$@"
