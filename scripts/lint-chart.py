#!/usr/bin/env python3
"""The Helm engine for scripts/lint-chart, through the helm-sdkpy bindings.

helm-sdkpy bundles Helm v4 as a shared library, with no `helm` binary. Its
Python API has a lint action (chart defaults only) and an install action, but
no `helm template`. So:

  lint CHART [--set K=V]... [--set-json K=JSON]...
      `helm lint --strict --set …`: the lint action on a copy of the chart
      whose values.yaml has those values merged in. Exit 1 on any error
      or warning. (The bindings drop the text of lint messages; only the
      severity and the file are known. `template` shows the messages.)

  template CHART [--set K=V]... [--set-json K=JSON]... [--release NAME]
                 [--namespace NS] [--notes]
      `helm template --set …`: the install action against a throwaway
      in-process stand-in for the Kubernetes API server, with the in-memory
      release store (HELM_DRIVER=memory): Helm renders the chart exactly as
      `helm install` does, `fail` messages included, and the stand-in accepts
      every object. Prints the manifest (and with --notes the rendered
      NOTES.txt); exit 1 with Helm's error message when rendering fails.

  verify MANIFEST --storage sqlite|postgres --replicas N [--toml K=V]...
      Checks a rendered manifest of the policyhub chart: the resources of the
      storage mode, the pod's security settings and probes, and that the
      configuration file is valid TOML without `insecure` (and holds K=V).

  docs CHART
      Every key of values.yaml has a comment, and README.md names every value.

scripts/lint-chart puts helm-sdkpy and PyYAML on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import tomllib
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import yaml

# Releases live in memory, and Helm's cache and configuration directories
# under target/, not in the user's home. The Go runtime inside helm-sdkpy reads
# the environment the process started with, not later changes of os.environ:
# so set the variables and start again.
_HELM_HOME = Path(__file__).resolve().parent.parent / "target" / "tools" / "helm-home"
_HELM_ENV = {"HELM_DRIVER": "memory"} | {
    f"HELM_{name.upper()}_HOME": str(_HELM_HOME / name) for name in ("cache", "config", "data")
}
if any(os.environ.get(name) != value for name, value in _HELM_ENV.items()):
    os.execve(sys.executable, [sys.executable, *sys.argv], os.environ | _HELM_ENV)

SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


def typed(raw: str):
    """A --set scalar, typed as helm does: true/false, null, integers, else text."""
    if raw in ("true", "false"):
        return raw == "true"
    if raw == "null":
        return None
    if re.fullmatch(r"-?(0|[1-9][0-9]*)", raw):
        return int(raw)
    return raw


def parse_set(pairs: list[str], json_pairs: list[str] = ()) -> dict:
    """--set a.b=c pairs as nested values, like helm: typed scalars, {a,b} a
    list; --set-json a.b=JSON pairs (for floats, lists of maps, …)."""
    values: dict = {}
    for pair in [*pairs, *json_pairs]:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            sys.exit(f"--set {pair!r}: expected KEY=VALUE")
        if pair in json_pairs:
            value = json.loads(raw)
        elif raw.startswith("{") and raw.endswith("}"):
            value = [typed(item) for item in raw[1:-1].split(",") if item]
        else:
            value = typed(raw)
        node = values
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return values


def merge(base: dict, override: dict) -> dict:
    """Helm's value coalescing: maps merge, anything else replaces; null deletes."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def helm():
    import helm_sdkpy

    return helm_sdkpy


# --- a stand-in for the Kubernetes API server -------------------------------

def _resource(name: str, kind: str, namespaced: bool = True) -> dict:
    verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
    return {"name": name, "singularName": "", "namespaced": namespaced, "kind": kind, "verbs": verbs}


# Discovery: the kinds the chart may render.
API_RESOURCES = {
    "v1": [
        _resource("configmaps", "ConfigMap"),
        _resource("secrets", "Secret"),
        _resource("services", "Service"),
        _resource("serviceaccounts", "ServiceAccount"),
        _resource("persistentvolumeclaims", "PersistentVolumeClaim"),
        _resource("pods", "Pod"),
        _resource("namespaces", "Namespace", namespaced=False),
    ],
    "apps/v1": [_resource("deployments", "Deployment"), _resource("statefulsets", "StatefulSet")],
    "policy/v1": [_resource("poddisruptionbudgets", "PodDisruptionBudget")],
    "monitoring.coreos.com/v1": [_resource("servicemonitors", "ServiceMonitor")],
}
PLURALS = {r["name"] for resources in API_RESOURCES.values() for r in resources}
KUBE_VERSION = {"major": "1", "minor": "31", "gitVersion": "v1.31.0", "platform": "linux/amd64"}


class FakeApiServer(BaseHTTPRequestHandler):
    """Answers discovery, has no objects, accepts every write."""

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _read(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"{}")

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/version":
            return self._send(200, KUBE_VERSION)
        if path == "/api":
            return self._send(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        if path == "/apis":
            groups = []
            for group_version in API_RESOURCES:
                if "/" in group_version:
                    group, version = group_version.split("/")
                    gv = {"groupVersion": group_version, "version": version}
                    groups.append({"name": group, "versions": [gv], "preferredVersion": gv})
            return self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        group_version = "v1" if path == "/api/v1" else path.removeprefix("/apis/")
        if group_version in API_RESOURCES:
            return self._send(200, {
                "kind": "APIResourceList", "groupVersion": group_version,
                "resources": API_RESOURCES[group_version],
            })
        if path.rstrip("/").rsplit("/", 1)[-1] in PLURALS:
            return self._send(200, {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []})
        return self._send(404, {
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": f"{path} not found",
        })

    def do_POST(self):
        obj = self._read()
        obj.setdefault("metadata", {}).update(uid=str(uuid.uuid4()), resourceVersion="1")
        self._send(201, obj)

    def do_PUT(self):
        obj = self._read()
        obj.setdefault("metadata", {})["resourceVersion"] = "2"
        self._send(200, obj)

    do_PATCH = do_PUT

    def do_DELETE(self):
        self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})


def kubeconfig_for(port: int, namespace: str) -> str:
    return yaml.safe_dump({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "stand-in", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "stand-in", "user": {"token": "unused"}}],
        "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "stand-in", "namespace": namespace}}],
        "current-context": "stand-in",
    })


# --- commands ----------------------------------------------------------------

def cmd_lint(args) -> int:
    chart = Path(args.chart)
    overrides = parse_set(args.set, args.set_json)
    with tempfile.TemporaryDirectory(prefix="lint-chart.") as tmp:
        copy = Path(tmp) / chart.resolve().name
        shutil.copytree(chart, copy)
        if overrides:
            values_file = copy / "values.yaml"
            values = yaml.safe_load(values_file.read_text()) or {}
            values_file.write_text(yaml.safe_dump(merge(values, overrides), sort_keys=False))
        h = helm()
        config = h.Configuration(kubeconfig=kubeconfig_for(1, "default"))
        result = asyncio.run(h.Lint(config).run(str(copy)))
    failed = False
    for message in result.get("Messages") or []:
        severity = SEVERITY.get(message.get("Severity"), str(message.get("Severity")))
        print(f"[{severity}] {message.get('Path')}")
        if message.get("Severity", 0) >= 2:
            failed = True
    if result.get("Errors"):
        failed = True
    if failed:
        print("lint found problems (helm-sdkpy drops the messages' text: run `template` for details)")
    return 1 if failed else 0


def cmd_template(args) -> int:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApiServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        h = helm()
        config = h.Configuration(
            namespace=args.namespace,
            kubeconfig=kubeconfig_for(server.server_address[1], args.namespace),
        )
        try:
            release = asyncio.run(h.Install(config).run(
                args.release, str(Path(args.chart).resolve()), values=parse_set(args.set, args.set_json),
                wait=False, timeout=30,
            ))
        except h.HelmError as error:
            print(f"Error: {error}", file=sys.stderr)
            return 1
    finally:
        server.shutdown()
    sys.stdout.write(release.get("manifest", ""))
    if args.notes:
        notes = (release.get("info") or {}).get("notes", "")
        sys.stdout.write("\n# NOTES.txt\n" + "".join(f"# {line}\n" for line in notes.splitlines()))
    return 0


def cmd_verify(args) -> int:
    docs = [d for d in yaml.safe_load_all(Path(args.manifest).read_text()) if d]
    by_kind: dict[str, list[dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    problems: list[str] = []

    def check(ok: bool, what: str) -> None:
        if not ok:
            problems.append(what)

    def one(kind: str) -> dict:
        found = by_kind.get(kind, [])
        check(len(found) == 1, f"expected one {kind}, found {len(found)}")
        return found[0] if found else {}

    postgres = args.storage == "postgres"
    deployment = one("Deployment")
    spec = deployment.get("spec", {})
    pod = spec.get("template", {}).get("spec", {})
    containers = pod.get("containers") or [{}]
    container = containers[0]
    check(spec.get("replicas") == args.replicas, f"replicas {spec.get('replicas')}, expected {args.replicas}")
    strategy = spec.get("strategy", {}).get("type")
    check(strategy == ("RollingUpdate" if postgres else "Recreate"), f"strategy {strategy}")

    # Storage mode.
    pvcs = by_kind.get("PersistentVolumeClaim", [])
    pdbs = by_kind.get("PodDisruptionBudget", [])
    env = {e["name"]: e for e in container.get("env", [])}
    data = next((v for v in pod.get("volumes", []) if v["name"] == "data"), {})
    if postgres:
        check(not pvcs, "postgres mode renders a PersistentVolumeClaim")
        check(len(pdbs) == (1 if args.replicas > 1 else 0), f"{len(pdbs)} PodDisruptionBudgets")
        url = env.get("POLICYHUB_DATABASE_URL", {}).get("valueFrom", {}).get("secretKeyRef")
        check(bool(url), "POLICYHUB_DATABASE_URL does not come from a Secret")
    else:
        check(len(pvcs) == 1, f"{len(pvcs)} PersistentVolumeClaims in sqlite mode")
        check(not pdbs, "sqlite mode renders a PodDisruptionBudget")
        check("POLICYHUB_DATABASE_URL" not in env, "sqlite mode sets POLICYHUB_DATABASE_URL")
        claim = data.get("persistentVolumeClaim", {}).get("claimName")
        check(bool(pvcs) and claim == pvcs[0]["metadata"]["name"], "the data volume is not the claim")

    # Security.
    pod_security = pod.get("securityContext", {})
    security = container.get("securityContext", {})
    check(pod_security.get("runAsNonRoot") is True, "pod: runAsNonRoot")
    check(isinstance(pod_security.get("runAsUser"), int) and pod_security["runAsUser"] > 0, "pod: fixed non-root runAsUser")
    check(pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", "pod: seccompProfile RuntimeDefault")
    check(security.get("readOnlyRootFilesystem") is True, "container: readOnlyRootFilesystem")
    check(security.get("allowPrivilegeEscalation") is False, "container: allowPrivilegeEscalation false")
    check(security.get("capabilities", {}).get("drop") == ["ALL"], "container: drop ALL capabilities")
    check(security.get("seccompProfile", {}).get("type") == "RuntimeDefault", "container: seccompProfile RuntimeDefault")
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    check("/tmp" in mounts, "no writable /tmp")
    for path, mount in mounts.items():
        if path.startswith("/etc/"):
            check(mount.get("readOnly") is True, f"{path} is not mounted read-only")

    # The configuration file.
    configmap = one("ConfigMap")
    try:
        settings = tomllib.loads(configmap.get("data", {}).get("policyhub.toml", ""))
    except tomllib.TOMLDecodeError as error:
        problems.append(f"policyhub.toml is not valid TOML: {error}")
        settings = {}

    # Probes: native gRPC on the gRPC port; TCP when it speaks TLS.
    grpc_port = next((p["containerPort"] for p in container.get("ports", []) if p["name"] == "grpc"), None)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if "tls" in settings:
            handler = container.get(probe, {}).get("tcpSocket", {})
            check(handler.get("port") == "grpc", f"{probe} is not a TCP probe on the grpc port")
        else:
            handler = container.get(probe, {}).get("grpc", {})
            check(handler.get("port") == grpc_port and grpc_port is not None, f"{probe} is not a gRPC probe on port {grpc_port}")

    # Service ports.
    ports = {p["name"]: p for p in one("Service").get("spec", {}).get("ports", [])}
    check(ports.get("grpc", {}).get("port") == 50051, "Service: no grpc port 50051")
    check(ports.get("metrics", {}).get("port") == 9090, "Service: no metrics port 9090")

    check("insecure" not in settings, "policyhub.toml sets insecure")
    check("database_url" not in settings, "policyhub.toml holds the database URL")
    check(str(settings.get("listen", "")).endswith(f":{grpc_port}"), f"listen = {settings.get('listen')!r}")
    check(settings.get("data_dir") == "/var/lib/policyhub", f"data_dir = {settings.get('data_dir')!r}")
    check("/var/lib/policyhub" in mounts, "the data directory is not mounted")
    if postgres:
        check(bool(settings.get("signing", {}).get("key_files")), "postgres mode without signing.key_files")
    for expected in args.toml:
        key, _, raw = expected.partition("=")
        try:
            want = json.loads(raw)
        except ValueError:
            want = raw
        node = settings
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        check(node == want and type(node) is type(want), f"policyhub.toml: {key} = {node!r}, expected {want!r}")

    if problems:
        for problem in problems:
            print(problem)
        return 1
    print(f"{len(docs)} objects: " + ", ".join(sorted(f"{kind}×{len(v)}" for kind, v in by_kind.items())))
    return 0


def cmd_docs(args) -> int:
    """Every key of values.yaml has a comment above it (or after it), and every
    value, or one of its parents, is named in `backticks` in README.md."""
    chart = Path(args.chart)
    text = (chart / "values.yaml").read_text()
    problems = []
    previous = ""
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            continue
        key_line = not stripped.startswith(("#", "-")) and ":" in stripped
        if key_line and not previous.startswith("#") and " #" not in stripped:
            problems.append(f"values.yaml:{number}: {stripped.split(':')[0]} has no comment")
        previous = stripped

    readme = (chart / "README.md").read_text()
    documented = set()
    for chunk in readme.split("`")[1::2]:
        documented.add(chunk.strip())

    def leaves(node, path):
        if isinstance(node, dict) and node:
            for key, value in node.items():
                yield from leaves(value, f"{path}.{key}" if path else key)
        else:
            yield path

    for leaf in leaves(yaml.safe_load(text), ""):
        parts = leaf.split(".")
        if not any(".".join(parts[:n]) in documented for n in range(1, len(parts) + 1)):
            problems.append(f"README.md: no row for `{leaf}`")
    for problem in problems:
        print(problem)
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    lint = commands.add_parser("lint")
    lint.add_argument("chart")
    lint.add_argument("--set", action="append", default=[])
    lint.add_argument("--set-json", action="append", default=[])
    template = commands.add_parser("template")
    template.add_argument("chart")
    template.add_argument("--set", action="append", default=[])
    template.add_argument("--set-json", action="append", default=[])
    template.add_argument("--release", default="policyhub")
    template.add_argument("--namespace", default="default")
    template.add_argument("--notes", action="store_true")
    verify = commands.add_parser("verify")
    verify.add_argument("manifest")
    verify.add_argument("--storage", choices=["sqlite", "postgres"], required=True)
    verify.add_argument("--replicas", type=int, required=True)
    verify.add_argument("--toml", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting the configuration file must hold (VALUE as JSON, else text)")
    docs = commands.add_parser("docs")
    docs.add_argument("chart")
    commands.add_parser("version")
    args = parser.parse_args()
    if args.command == "version":
        print(helm().get_version())
        return 0
    commands_by_name = {"lint": cmd_lint, "template": cmd_template, "verify": cmd_verify, "docs": cmd_docs}
    return commands_by_name[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
