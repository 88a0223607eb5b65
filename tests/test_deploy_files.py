"""The deployment files (deploy/) agree with the code: three nodes in three zones, Jaeger
reachable on OTLP/gRPC, and every node command is a valid `stoic node` command line for
the CLI as it is now (so an incompatible CLI change fails here, not in someone's cluster).

Nothing is started: Docker and a Kubernetes API server are not assumed. The YAML checks
need PyYAML; without it they are skipped with a reason.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from pathlib import Path
from typing import Any

import pytest

from supervisor.cli import build_parser

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
IMAGE_APP_DIR = "/app/"  # where deploy/Dockerfile puts the repository
NODE_PORT = 50051

ADVERTISE_MISSING = (
    "`stoic node` has no --advertise HOST:PORT flag yet: behind --listen 0.0.0.0 a node "
    "must publish an address its peers can reach (service name or pod IP)"
)


def _yaml() -> Any:
    return pytest.importorskip("yaml", reason="PyYAML is not installed; deploy YAML not checked")


def _compose() -> dict[str, Any]:
    data = _yaml().safe_load(COMPOSE.read_text())
    if not isinstance(data, dict):
        pytest.fail(f"{COMPOSE}: expected a mapping at top level")
    return data


def _k8s_docs() -> list[dict[str, Any]]:
    yaml = _yaml()
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                doc["__file__"] = path.name
                docs.append(doc)
    return docs


def _parse_node(argv: list[str], where: str) -> tuple[argparse.Namespace, bool]:
    """Parse `argv` (without the program name) with the real CLI parser.

    Returns (namespace, advertise_supported). Any problem other than an unknown
    --advertise flag fails the test, naming `where`."""
    parser = build_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args, extra = parser.parse_known_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: not a valid stoic command line {argv!r}: {err.getvalue().strip()}")
    unknown = [a for a in extra if not a.startswith("--advertise")]
    if unknown:
        pytest.fail(f"{where}: unknown arguments {unknown!r} in {argv!r}")
    if args.cmd != "node":
        pytest.fail(f"{where}: runs `stoic {args.cmd}`, expected `stoic node`")
    advertise_ok = not extra
    if advertise_ok:
        advertise = getattr(args, "advertise", "")
        host, _, port = str(advertise).rpartition(":")
        if not host or not port.isdigit():
            pytest.fail(f"{where}: --advertise must be HOST:PORT, got {advertise!r}")
    _check_node_config(args, where)
    return args, advertise_ok


def _check_node_config(args: argparse.Namespace, where: str) -> None:
    from supervisor._node import NodeConfig

    try:
        NodeConfig(node_id=args.node_id, zone=args.zone, listen=args.listen,
                   store_url=args.store, apps=tuple(args.apps), state_dir=args.state_dir,
                   advertise=getattr(args, "advertise", ""))
    except ValueError as exc:
        pytest.fail(f"{where}: node configuration rejected: {exc}")
    for app in args.apps:
        if not app.startswith(IMAGE_APP_DIR):
            pytest.fail(f"{where}: app {app!r} is not under {IMAGE_APP_DIR} in the image")
        if not (REPO / app.removeprefix(IMAGE_APP_DIR)).is_file():
            pytest.fail(f"{where}: app {app!r} is not a file of the repository")


def _advertise_arg(argv: list[str]) -> str:
    for i, a in enumerate(argv):
        if a.startswith("--advertise="):
            return a.split("=", 1)[1]
        if a == "--advertise" and i + 1 < len(argv):
            return argv[i + 1]
    return ""


# --- Dockerfile -----------------------------------------------------------------------
def test_dockerfile_builds_a_non_root_stoic_image() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    stages = [i for i, ln in enumerate(lines) if ln.startswith("FROM ")]
    assert [lines[i] for i in stages] == ["FROM python:3.11-slim AS build",
                                          "FROM python:3.11-slim"]
    build, image = lines[stages[0]:stages[1]], lines[stages[1]:]
    # the build stage has a compiler and checks that the C span encoder went into the wheel
    assert any("apt-get install" in ln and "gcc" in ln for ln in build)
    assert any(re.search(r"pip wheel\b.*\s\.(\s|$)", ln) for ln in build), "no `pip wheel .`"
    assert any("_otlp_fast" in ln for ln in build)
    # the image installs that wheel, checks the encoder loads, and has no compiler
    assert any("COPY --from=build" in ln for ln in image)
    assert any("pip install" in ln and ".whl" in ln for ln in image)
    assert any("FAST_ENCODER" in ln for ln in image)
    assert not any("gcc" in ln for ln in image)
    # no source packages in the image's working directory: they would shadow the wheel
    # (and its compiled encoder) for `python -m`
    copied = [ln.split()[1] for ln in image if ln.startswith("COPY ") and "--from" not in ln]
    assert not {"runtime", "supervisor"} & set(copied), copied
    users = [ln.split()[1] for ln in image if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert 'ENTRYPOINT ["stoic"]' in image
    for ln in lines:
        if ln.startswith("COPY ") and "--from" not in ln:
            *sources, _dest = ln.split()[1:]
            for src in sources:
                assert (REPO / src).exists(), f"Dockerfile copies {src!r}, absent from the repository"


# --- docker compose -------------------------------------------------------------------
def test_compose_runs_three_nodes_in_three_zones_with_redis_and_jaeger() -> None:
    services: dict[str, Any] = _compose()["services"]
    assert {"jaeger", "redis"} <= set(services)

    jaeger = services["jaeger"]
    # Jaeger v2, pinned (v1's all-in-one is past its end of life; v2 takes OTLP as it is)
    image = str(jaeger["image"])
    assert image.startswith("cr.jaegertracing.io/jaegertracing/jaeger:2."), image
    container_ports = {str(p).rsplit(":", 1)[-1] for p in jaeger["ports"]}
    assert {"4317", "16686"} <= container_ports
    assert str(services["redis"]["image"]).startswith("redis:7")

    nodes = {name: svc for name, svc in services.items()
             if isinstance(svc.get("command"), list) and svc["command"][:1] == ["node"]}
    assert len(nodes) == 3, f"expected three node services, got {sorted(nodes)}"

    zones, host_ports, advertise_missing = set(), set(), False
    for name, svc in nodes.items():
        args, advertise_ok = _parse_node(list(svc["command"]), f"compose service {name}")
        advertise_missing |= not advertise_ok
        zones.add(args.zone)
        assert args.listen == f"0.0.0.0:{NODE_PORT}"
        assert args.store.startswith("redis://redis:"), f"{name}: store {args.store!r}"
        # peers reach the node by its service name
        assert _advertise_arg(svc["command"]) == f"{name}:{NODE_PORT}"
        assert svc["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert (COMPOSE.parent / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        env = svc["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4317"
        assert env["OTEL_SERVICE_NAME"] == "stoic"
        assert {"redis", "jaeger"} <= set(svc["depends_on"])
        (mapping,) = svc["ports"]
        host, container = str(mapping).split(":")
        assert container == str(NODE_PORT)
        host_ports.add(int(host))
        probe = svc["healthcheck"]["test"]
        assert probe[:3] == ["CMD", "python", "-c"]
        compile(probe[3], f"{name} healthcheck", "exec")
        assert f"127.0.0.1:{NODE_PORT}" in probe[3] and "grpc_health" in probe[3]

    assert zones == {"a", "b", "c"}
    assert host_ports == {50051, 50052, 50053}
    if advertise_missing:
        pytest.xfail(ADVERTISE_MISSING)


def test_the_compose_check_rewrites_every_address_to_loopback() -> None:
    """deploy/check/loopback.py (what deploy/check/run.sh brings up) keeps the compose
    file's services and commands, and leaves no address but 127.0.0.1 in them: a new
    service name, port or flag in docker-compose.yml that it misses fails here."""
    _yaml()
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("loopback", DEPLOY / "check" / "loopback.py")
    assert spec is not None and spec.loader is not None
    loopback = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loopback)
    original = _compose()
    ports = {"node-a": 15051, "node-b": 15052, "node-c": 15053}
    out = loopback.rewrite(original, ports, 16379, 14317)
    assert set(out["services"]) == set(original["services"])
    assert original["services"]["node-a"].get("network_mode") is None  # not modified
    names = set(original["services"])
    for name, svc in out["services"].items():
        assert svc["network_mode"] == "host" and "ports" not in svc and "hostname" not in svc
        text = json.dumps(svc)
        for other in names:  # no service name used as a host
            assert not re.search(rf"(//|=|'){re.escape(other)}:\d", text), (name, other)
        assert "0.0.0.0" not in text, name
    for name, port in ports.items():
        args, _ = _parse_node(list(out["services"][name]["command"]), name)
        assert args.listen == f"127.0.0.1:{port}"
        assert args.store == "redis://127.0.0.1:16379/0"
        assert out["services"][name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == (
            "http://127.0.0.1:14317")
        assert f"127.0.0.1:{port}" in out["services"][name]["healthcheck"]["test"][3]
    assert "16379" in out["services"]["redis"]["healthcheck"]["test"]


def test_compose_k8s_and_readme_name_one_jaeger_image() -> None:
    image = str(_compose()["services"]["jaeger"]["image"])
    k8s = [c["image"] for d in _k8s_docs()
           if d["kind"] == "Deployment" and d["metadata"]["name"] == "jaeger"
           for c in d["spec"]["template"]["spec"]["containers"]]
    assert k8s == [image]
    assert f" {image}\n" in (REPO / "README.md").read_text(), "the README's docker run line"


# --- Kubernetes -----------------------------------------------------------------------
def test_k8s_runs_one_deployment_per_zone_with_grpc_probes() -> None:
    docs = _k8s_docs()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Namespace", "stoic") in kinds
    assert {("Deployment", "redis"), ("Service", "redis")} <= kinds
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == "stoic", f"{d['__file__']}: {d['metadata']['name']}"

    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    peers = [s for s in services.values() if s["spec"].get("clusterIP") == "None"]
    clients = [s for s in services.values()
               if s["spec"].get("clusterIP") != "None" and s["spec"].get("type", "ClusterIP") == "ClusterIP"
               and s["spec"]["selector"] == {"app.kubernetes.io/name": "stoic"}]
    assert len(peers) == 1 and len(clients) == 1

    nodes = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")
             and d["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/name") == "stoic"]
    zones, advertise_missing = set(), False
    for dep in nodes:
        name = f"{dep['__file__']}: {dep['kind']} {dep['metadata']['name']}"
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env_names = {e["name"] for e in container.get("env", [])}
        argv = list(container["args"])
        for ref in re.findall(r"\$\((\w+)\)", " ".join(argv)):
            assert ref in env_names, f"{name}: args use $({ref}) but env does not define it"
        # what the kubelet would pass: $(VAR) expanded
        expanded = [re.sub(r"\$\((\w+)\)", "stoic-x-0" if "NAME" in a else "10.0.0.1", a)
                    for a in argv]
        args, advertise_ok = _parse_node(expanded, name)
        advertise_missing |= not advertise_ok
        zones.add(args.zone)
        assert args.listen == f"0.0.0.0:{NODE_PORT}"
        assert _advertise_arg(argv) == f"$(POD_IP):{NODE_PORT}"

        terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        (expr,) = terms["nodeSelectorTerms"][0]["matchExpressions"]
        assert expr["key"] == "topology.kubernetes.io/zone"
        assert expr["values"] == [f"zone-{args.zone}"], f"{name}: pinned to {expr['values']}"
        assert pod["topologySpreadConstraints"]

        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"] == {"port": NODE_PORT}, f"{name}: {probe}"
        assert pod["securityContext"]["runAsNonRoot"] is True

    assert len(nodes) == 3 and zones == {"a", "b", "c"}
    if advertise_missing:
        pytest.xfail(ADVERTISE_MISSING)


def test_k8s_kustomization_lists_every_manifest() -> None:
    kustomization = _yaml().safe_load((K8S / "kustomization.yaml").read_text())
    others = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == others
