"""Print deploy/docker-compose.yml rewritten to run on the host's loopback only.

For `deploy/check/run.sh` on a machine whose traffic must stay on 127.0.0.0/8: every
service joins the host's network namespace (`network_mode: host`, so no bridge network
and no published ports) and services reach each other at 127.0.0.1 on the ports given,
where the real file has them reach each other by service name on the compose network.
The `jaeger` service runs the check's OTLP receiver (`stoic-check/otlp-receiver`, which
logs every span so that the check can read them) in place of Jaeger. Everything else
(images, build, commands, healthchecks, environment, dependencies, restart policy, init)
is the file as it is.

    python deploy/check/loopback.py NODE_PORT_A NODE_PORT_B NODE_PORT_C REDIS_PORT OTLP_PORT
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml

COMPOSE = Path(__file__).resolve().parent.parent / "docker-compose.yml"
NODES = ("node-a", "node-b", "node-c")


def rewrite(compose: dict[str, Any], node_ports: dict[str, int], redis_port: int,
            otlp_port: int) -> dict[str, Any]:
    # YAML merge keys (`<<: *node`) share nested mappings between services: copy them
    services: dict[str, Any] = {name: copy.deepcopy(svc)
                                for name, svc in compose["services"].items()}
    compose = {**compose, "services": services}
    for svc in services.values():
        svc["network_mode"] = "host"
        svc.pop("ports", None)
        svc.pop("hostname", None)  # docker refuses a hostname in the host's namespace
    # Compose files built for the check resolve the build context from this file's dir.
    for name in NODES:
        build = services[name].get("build")
        if isinstance(build, dict):
            build["context"] = str(COMPOSE.parent.parent)
    services["jaeger"] = {"image": "stoic-check/otlp-receiver", "network_mode": "host",
                          "environment": {"OTLP_LISTEN": f"127.0.0.1:{otlp_port}"}}
    redis = services["redis"]
    redis["command"] = [*redis["command"], "--bind", "127.0.0.1", "--port", str(redis_port)]
    redis["healthcheck"]["test"] = ["CMD", "redis-cli", "-p", str(redis_port), "ping"]
    for name, port in node_ports.items():
        svc = services[name]
        command = []
        for arg in svc["command"]:
            if arg.startswith("--listen="):
                arg = f"--listen=127.0.0.1:{port}"
            elif arg.startswith("--advertise="):
                arg = f"--advertise=127.0.0.1:{port}"
            elif arg.startswith("--store=redis://"):
                arg = f"--store=redis://127.0.0.1:{redis_port}/0"
            command.append(arg)
        svc["command"] = command
        env = dict(svc.get("environment") or {})
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{otlp_port}"
        svc["environment"] = env
        check = svc["healthcheck"]["test"]
        svc["healthcheck"]["test"] = [part.replace("127.0.0.1:50051", f"127.0.0.1:{port}")
                                      for part in check]
    return compose


def main(argv: list[str]) -> int:
    if len(argv) != 5 or not all(a.isdigit() for a in argv):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    a, b, c, redis_port, otlp_port = (int(x) for x in argv)
    compose = yaml.safe_load(COMPOSE.read_text())
    out = rewrite(compose, dict(zip(NODES, (a, b, c), strict=True)), redis_port, otlp_port)
    print(yaml.safe_dump(out, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
