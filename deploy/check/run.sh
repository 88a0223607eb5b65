#!/usr/bin/env bash
# Check deploy/Dockerfile and deploy/docker-compose.yml for real: build the image, bring the
# compose file up (three nodes in three zones, Redis, a collector), walk the README's compose
# tour with the stoic CLI from the image, and check that the collector received the spans
# of each invocation from the nodes that ran it. Then take everything down.
#
#   bash deploy/check/run.sh        (needs a running Docker engine and docker compose,
#                                    v2 or v1.29; root, debootstrap and deb.debian.org
#                                    only when stand-in base images must be built)
#
# Two differences from `docker compose up`, both said by deploy/check/loopback.py: the
# services share the host's network and talk over 127.0.0.1 (traffic on the check machine
# stays on loopback), and the collector is an OTLP receiver that logs spans instead of
# Jaeger. Where no registry serves python:3.11-slim or redis:7, stand-ins are built from
# Debian's packages (deploy/check/standin/).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PROJECT=stoiccheck
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT  # replaced by the compose clean-up once it is up
say() { printf '== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
build() {  # docker build -q ARGS..., its output shown only when it fails
    docker build -q --network host "$@" >"$WORK/build.log" 2>&1 \
        || { tail -30 "$WORK/build.log"; fail "docker build $*"; }
}

docker info >/dev/null 2>&1 || fail "no Docker engine answers (docker info)"
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
    COMPOSE=(docker-compose)
else
    fail "neither 'docker compose' nor 'docker-compose' is installed"
fi
python3 -c "import yaml" 2>/dev/null || fail "python3 needs PyYAML (deploy/check/loopback.py)"

# --- base images: the registry's, else stand-ins ----------------------------------------
have_image() { docker image inspect "$1" >/dev/null 2>&1 || docker pull -q "$1" >/dev/null 2>&1; }
debian_base() {
    have_image stoic-check/debian:bookworm && return
    command -v debootstrap >/dev/null || fail "no registry image and no debootstrap for a stand-in"
    say "building a Debian bookworm base with debootstrap (a few minutes)"
    debootstrap --variant=minbase --include=python3,python3-venv,redis-server,redis-tools,ca-certificates \
        bookworm "$WORK/rootfs" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; fail "debootstrap"; }
    tar -C "$WORK/rootfs" -c . | docker import - stoic-check/debian:bookworm >/dev/null
    rm -rf "$WORK/rootfs"
}
STANDIN="$WORK/standin"
cp -r "$HERE/standin" "$STANDIN"
cp /usr/local/share/ca-certificates/*.crt "$STANDIN/" 2>/dev/null || true
if ! have_image python:3.11-slim; then
    debian_base
    say "python:3.11-slim is not available: building a stand-in"
    build -f "$STANDIN/python.Dockerfile" -t python:3.11-slim "$STANDIN"
fi
if ! have_image redis:7; then
    debian_base
    say "redis:7 is not available: building a stand-in"
    build -f "$STANDIN/redis.Dockerfile" -t redis:7 "$STANDIN"
fi

# --- the image, from the committed tree (what a clone gets) -------------------------------
say "building stoic:dev from deploy/Dockerfile (HEAD $(git -C "$REPO" rev-parse --short HEAD))"
mkdir "$WORK/context"
git -C "$REPO" archive HEAD | tar -x -C "$WORK/context"
build -f "$WORK/context/deploy/Dockerfile" -t stoic:dev "$WORK/context"
build -f "$STANDIN/receiver.Dockerfile" -t stoic-check/otlp-receiver "$STANDIN"

# --- up -----------------------------------------------------------------------------------
read -r A B C R O < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
python3 "$HERE/loopback.py" "$A" "$B" "$C" "$R" "$O" >"$WORK/compose.yml"
dc() { "${COMPOSE[@]}" -p "$PROJECT" -f "$WORK/compose.yml" "$@"; }
cleanup() {
    dc logs --no-color >"$WORK/logs.txt" 2>&1 || true
    dc down -v --remove-orphans >/dev/null 2>&1 || true
    [ -n "${KEEP_LOGS:-}" ] && cp "$WORK/logs.txt" "$KEEP_LOGS"
    rm -rf "$WORK"
}
trap cleanup EXIT
say "docker compose up (nodes on 127.0.0.1:$A, :$B, :$C)"
dc up -d --no-build >/dev/null 2>&1 || { dc up -d --no-build; fail "compose up"; }

healthy() {  # every service that has a healthcheck reports healthy
    local ids status n=0
    ids=$(dc ps -q)
    for id in $ids; do
        status=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id")
        [ "$status" = healthy ] && n=$((n + 1))
    done
    [ "$n" -eq 4 ]  # redis and three nodes
}
up_at=$SECONDS
deadline=$((SECONDS + 180))
until healthy; do
    [ $SECONDS -lt $deadline ] || { dc ps; fail "not every service became healthy in 180 s"; }
    sleep 2
done
say "all services healthy $((SECONDS - up_at)) s after up"

# --- the README's compose tour --------------------------------------------------------------
TARGET="127.0.0.1:$A,127.0.0.1:$B,127.0.0.1:$C"
stoic() { docker run --rm --network host -e STOIC_TARGET="$TARGET" stoic:dev "$@"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }

stoic status >"$WORK/status.txt"
for node in node-a node-b node-c; do
    grep -q "node $node .* healthy" "$WORK/status.txt" || { cat "$WORK/status.txt"; fail "$node not in status"; }
done
say "stoic status lists node-a, node-b, node-c"

hello=$(stoic invoke hello --data '{"name": "compose"}' -v)
[ "$(echo "$hello" | python3 -c 'import json,sys; print(json.load(sys.stdin)["result"]["greeting"])')" = "hello compose" ] \
    || fail "hello: $hello"
flaky=$(stoic invoke flaky -v)
[ "$(echo "$flaky" | field attempts)" = 2 ] || fail "flaky did not take two attempts: $flaky"
say "hello ran on $(echo "$hello" | field node); flaky crashed once and succeeded on attempt 2"

t0=$SECONDS
dc stop node-b >/dev/null 2>&1
say "node-b stopped in $((SECONDS - t0)) s"
after=$(stoic invoke hello --data '{"name": "after"}' -v)
[ "$(echo "$after" | field node)" != node-b ] || fail "an invocation ran on the stopped node-b"
say "with node-b stopped, hello ran on $(echo "$after" | field node)"

# --- traces at the collector --------------------------------------------------------------
spans_of() { dc logs --no-color jaeger 2>/dev/null | grep -o "SPAN .* $1\$" || true; }
check_trace() {  # invocation id, node that must appear
    local inv=$1 node=$2 lines deadline=$((SECONDS + 30))
    until lines=$(spans_of "$inv") && echo "$lines" | grep -q " stoic.handler $node "; do
        [ $SECONDS -lt $deadline ] || { echo "$lines"; fail "no handler span from $node for $inv"; }
        sleep 1  # the nodes export in batches (OTEL_BSP_SCHEDULE_DELAY)
    done
    [ "$(echo "$lines" | awk '{print $2}' | sort -u | wc -l)" -eq 1 ] \
        || { echo "$lines"; fail "the spans of $inv are not one trace"; }
    echo "$lines" | grep -q " stoic.node.receive " || fail "no receive span for $inv"
    say "$inv: $(echo "$lines" | wc -l) spans, one trace, from $(echo "$lines" | awk '{print $4}' | sort -u | xargs)"
}
check_trace "$(echo "$hello" | field invocation_id)" "$(echo "$hello" | field node)"
check_trace "$(echo "$flaky" | field invocation_id)" "$(echo "$flaky" | field node)"
spans_of "$(echo "$flaky" | field invocation_id)" | grep -q " child_terminated " \
    || fail "no child_terminated span for flaky's crash"
check_trace "$(echo "$after" | field invocation_id)" "$(echo "$after" | field node)"

say "PASS"
