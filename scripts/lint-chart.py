#!/usr/bin/env python3
"""Helm for scripts/lint-chart, through the helm-sdkpy bindings, and the checks
of the policyhub chart that no tool does.

helm-sdkpy bundles Helm v4 as a shared library, with no `helm` binary. Its
Python API has Helm's lint (of the chart's own values.yaml) and install, but
no `helm template` and no --set: values go in as a map, which Helm merges into
the chart's values and validates against values.schema.json. So:

  template CHART [-f VALUES] [--notes]
      `helm template -f VALUES`: Helm's install action against a throwaway
      in-process stand-in for the Kubernetes API server that accepts every
      object (releases are kept in memory, HELM_DRIVER=memory). Prints the
      manifest, and with --notes the rendered NOTES.txt as comments; exit 1
      with Helm's error message when rendering fails.

  lint CHART [-f VALUES]
      `helm lint -f VALUES`: the lint action on a copy of the chart whose
      values.yaml holds the values Helm computed for VALUES (`helm get values
      --all` of the release `template` installs). Exit 1 on any error or
      warning. The bindings drop the messages' text; `template` shows it.

  verify MANIFEST --storage sqlite|postgres --replicas N [--agent]
         [--agent-token projected|secret] [--toml K=V]... [--bindings TEXT]...
      What the chart promises beyond valid, secure Kubernetes objects: the
      objects of the storage mode, probes that fit TLS, Secrets and the
      configuration mounted read-only, a valid policyhub.toml without
      `insecure` (holding each K=V), a valid bindings.toml (holding each
      TEXT) of one matcher per binding and trusted issuers, each issuer's
      ca_file mounted; with --agent, an agent DaemonSet whose API is served
      over TLS with a token, reached through a node-local Service, whose pods
      no selector of the server's takes, and which presents its projected
      ServiceAccount token for an audience of auth.issuers (or a Secret's).

  flags BINARY MANIFEST...
      Every policyhub container's arguments (the server's, the agent's), as
      rendered, are accepted by BINARY: it runs them with --help appended,
      which parses and checks every flag and value before printing the help.

  identity BINARY MANIFEST...
      The server BINARY starts with the [[auth.issuers]] and bindings.toml of
      every manifest that has bindings (the pod's files replaced by
      throwaway ones): it checks them as it would in the cluster.

  docs CHART
      Every key of values.yaml has a comment, README.md names every value,
      and its excerpt of the sidecar example holds the example's flags.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import tomllib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import yaml

# The stand-in's Kubernetes version, and the kinds the chart may render.
KUBE_VERSION = {"major": "1", "minor": "37", "gitVersion": "v1.37.0", "platform": "linux/amd64"}
KINDS = {
    "v1": ["ConfigMap", "PersistentVolumeClaim", "Service", "ServiceAccount"],
    "apps/v1": ["DaemonSet", "Deployment"],
    "policy/v1": ["PodDisruptionBudget"],
    "monitoring.coreos.com/v1": ["ServiceMonitor"],
}


class StandInApiServer(BaseHTTPRequestHandler):
    """Answers discovery, holds no objects, accepts every creation."""

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = urlsplit(self.path).path
        group_version = "v1" if path == "/api/v1" else path.removeprefix("/apis/")
        if path == "/version":
            self._send(200, KUBE_VERSION)
        elif path == "/api":
            self._send(200, {"kind": "APIVersions", "versions": ["v1"]})
        elif path == "/apis":
            groups = []
            for gv in [gv for gv in KINDS if "/" in gv]:
                version = {"groupVersion": gv, "version": gv.split("/")[1]}
                groups.append({"name": gv.split("/")[0], "versions": [version], "preferredVersion": version})
            self._send(200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
        elif group_version in KINDS:
            verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
            resources = [{"name": kind.lower() + "s", "singularName": "", "namespaced": True, "kind": kind,
                          "verbs": verbs} for kind in KINDS[group_version]]
            self._send(200, {"kind": "APIResourceList", "groupVersion": group_version, "resources": resources})
        else:
            self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                             "code": 404, "message": f"{path} not found"})

    def do_POST(self):
        obj = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        obj.setdefault("metadata", {}).update(uid="00000000-0000-0000-0000-000000000001", resourceVersion="1")
        self._send(201, obj)


def install(chart: str, values_file: str | None):
    """Installs the chart into a stand-in that serves until the process ends:
    (Helm's Configuration, the release)."""
    import helm_sdkpy as helm

    values = yaml.safe_load(Path(values_file).read_text()) if values_file else None
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandInApiServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cluster = {"server": f"http://127.0.0.1:{server.server_address[1]}"}
    kubeconfig = yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
        "clusters": [{"name": "stand-in", "cluster": cluster}],
        "users": [{"name": "stand-in", "user": {"token": "unused"}}],
        "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "stand-in"}}],
    })
    try:
        config = helm.Configuration(namespace="default", kubeconfig=kubeconfig)
        return config, asyncio.run(helm.Install(config).run(
            "policyhub", str(Path(chart).resolve()), values=values, wait=False, timeout=30))
    except helm.HelmError as error:
        sys.exit(f"Error: {error}")


def cmd_template(args) -> int:
    _, release = install(args.chart, args.values)
    sys.stdout.write(release.get("manifest", ""))
    if args.notes:
        notes = (release.get("info") or {}).get("notes", "")
        sys.stdout.write("\n# NOTES.txt\n" + "".join(f"# {line}\n" for line in notes.splitlines()))
    return 0


def cmd_lint(args) -> int:
    import helm_sdkpy as helm

    config, release = install(args.chart, args.values)
    values = asyncio.run(helm.GetValues(config).run(release["name"], all=True))
    with tempfile.TemporaryDirectory(prefix="lint-chart.") as tmp:
        copy = Path(tmp) / Path(args.chart).resolve().name
        shutil.copytree(args.chart, copy)
        (copy / "values.yaml").write_text(yaml.safe_dump(values))
        result = asyncio.run(helm.Lint(config).run(str(copy)))
    severities = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
    for message in result.get("Messages") or []:
        print(f"[{severities.get(message.get('Severity'))}] {message.get('Path')}")
    failed = result.get("Errors") or any(m.get("Severity", 0) >= 2 for m in result.get("Messages") or [])
    return 1 if failed else 0


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
    container = (pod.get("containers") or [{}])[0]
    check(spec.get("replicas") == args.replicas, f"replicas {spec.get('replicas')}, expected {args.replicas}")
    strategy = spec.get("strategy", {}).get("type")
    check(strategy == ("RollingUpdate" if postgres else "Recreate"), f"strategy {strategy}")

    # Storage mode.
    pvcs = by_kind.get("PersistentVolumeClaim", [])
    pdbs = by_kind.get("PodDisruptionBudget", [])
    env = {e["name"]: e for e in container.get("env", [])}
    if postgres:
        check(not pvcs, "postgres mode renders a PersistentVolumeClaim")
        check(len(pdbs) == (1 if args.replicas > 1 else 0), f"{len(pdbs)} PodDisruptionBudgets")
        url = env.get("POLICYHUB_DATABASE_URL", {}).get("valueFrom", {}).get("secretKeyRef")
        check(bool(url), "POLICYHUB_DATABASE_URL does not come from a Secret")
    else:
        check(len(pvcs) == 1, f"{len(pvcs)} PersistentVolumeClaims in sqlite mode")
        check(not pdbs, "sqlite mode renders a PodDisruptionBudget")
        check("POLICYHUB_DATABASE_URL" not in env, "sqlite mode sets POLICYHUB_DATABASE_URL")
        data = next((v for v in pod.get("volumes", []) if v["name"] == "data"), {})
        claim = data.get("persistentVolumeClaim", {}).get("claimName")
        check(bool(pvcs) and claim == pvcs[0]["metadata"]["name"], "the data volume is not the claim")

    # Mounts: the root filesystem is read-only, so /tmp and the data directory
    # are volumes; Secrets and the configuration are read-only.
    mounts = {m["mountPath"]: m for m in container.get("volumeMounts", [])}
    check("/tmp" in mounts, "no writable /tmp")
    check("/var/lib/policyhub" in mounts, "the data directory is not mounted")
    for path, mount in mounts.items():
        check(not path.startswith("/etc/") or mount.get("readOnly") is True, f"{path} is not mounted read-only")

    # The configuration file.
    try:
        settings = tomllib.loads(one("ConfigMap").get("data", {}).get("policyhub.toml", ""))
    except tomllib.TOMLDecodeError as error:
        problems.append(f"policyhub.toml is not valid TOML: {error}")
        settings = {}

    # Probes: gRPC health on the gRPC port in every mode; natively, or, when
    # it speaks TLS, by `policyhub health` in the container.
    grpc_port = next((p["containerPort"] for p in container.get("ports", []) if p["name"] == "grpc"), None)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if "tls" in settings:
            command = container.get(probe, {}).get("exec", {}).get("command", [])
            check(command[:5] == ["/policyhub", "health", "--server", f"https://localhost:{grpc_port}", "--tls-no-verify"],
                  f"{probe} is not `policyhub health` over TLS on port {grpc_port}: {command}")
            mtls = "client_ca_file" in settings.get("tls", {})
            check(("--cert-file" in command) == mtls, f"{probe}: a client certificate {'missing' if mtls else 'given'} without mTLS")
        else:
            handler = container.get(probe, {}).get("grpc", {})
            check(grpc_port is not None and handler.get("port") == grpc_port, f"{probe} is not a gRPC probe on port {grpc_port}")

    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    server_service = services.get(deployment.get("metadata", {}).get("name"), {})
    ports = {p["name"]: p for p in server_service.get("spec", {}).get("ports", [])}
    check(ports.get("grpc", {}).get("port") == 50051, "Service: no grpc port 50051")
    check(ports.get("metrics", {}).get("port") == 9090, "Service: no metrics port 9090")

    check("insecure" not in settings, "policyhub.toml sets insecure")
    check("database_url" not in settings, "policyhub.toml holds the database URL")
    check(str(settings.get("listen", "")).endswith(f":{grpc_port}"), f"listen = {settings.get('listen')!r}")
    check(settings.get("data_dir") == "/var/lib/policyhub", f"data_dir = {settings.get('data_dir')!r}")
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

    # The role bindings: a file of the mounted ConfigMap, each binding with
    # one matcher and an issuer it trusts (a SPIFFE ID: none).
    bindings_file = settings.get("auth", {}).get("bindings_file")
    if bindings_file:
        check(bindings_file == "/etc/policyhub/config/bindings.toml", f"auth.bindings_file = {bindings_file!r}")
        try:
            bindings = tomllib.loads(one("ConfigMap").get("data", {}).get("bindings.toml", "")).get("bindings", [])
        except tomllib.TOMLDecodeError as error:
            problems.append(f"bindings.toml is not valid TOML: {error}")
            bindings = []
        check(bool(bindings), "auth.bindings_file names a file with no [[bindings]]")
        issuers = {entry.get("issuer") for entry in settings.get("auth", {}).get("issuers", [])}
        for binding in bindings:
            matchers = [key for key in ("claim", "subject", "email", "service_account", "spiffe_id") if key in binding]
            check(len(matchers) == 1, f"binding {binding.get('name')!r} matches by {matchers}")
            if "spiffe_id" not in binding:
                check(binding.get("issuer") in issuers, f"binding {binding.get('name')!r}: issuer not in auth.issuers")
    for expected in args.bindings:
        check(expected in (one("ConfigMap").get("data", {}).get("bindings.toml") or ""), f"bindings.toml lacks {expected!r}")
    # The cluster's CA, mounted for an issuer's ca_file.
    for entry in settings.get("auth", {}).get("issuers", []):
        ca_file = entry.get("ca_file", "")
        check(not ca_file or any(ca_file.startswith(path + "/") for path in mounts), f"ca_file {ca_file!r} is not mounted")

    daemonsets = by_kind.get("DaemonSet", [])
    if args.agent:
        check(len(daemonsets) == 1, f"expected one agent DaemonSet, found {len(daemonsets)}")
        agent = daemonsets[0] if daemonsets else {}
        agent_pod = agent.get("spec", {}).get("template", {})
        agent_labels = agent_pod.get("metadata", {}).get("labels", {})
        agent_service = services.get(agent.get("metadata", {}).get("name"), {}).get("spec", {})

        def selects(selector: dict, labels: dict) -> bool:
            return all(labels.get(key) == value for key, value in selector.items())

        check(not selects(spec.get("selector", {}).get("matchLabels", {}), agent_labels),
              "the server's Deployment selects the agent's pods")
        check(not selects(server_service.get("spec", {}).get("selector", {}), agent_labels),
              "the server's Service selects the agent's pods")
        check(selects(agent_service.get("selector", {}), agent_labels), "the agent's Service does not select its pods")
        check(agent_service.get("internalTrafficPolicy") == "Local", "the agent's Service is not node-local")
        agent_container = (agent_pod.get("spec", {}).get("containers") or [{}])[0]
        flags = dict(arg.split("=", 1) for arg in agent_container.get("args", [])[1:] if "=" in arg)
        agent_mounts = {m["mountPath"]: m for m in agent_container.get("volumeMounts", [])}
        for flag in ("--api-tls-cert-file", "--api-tls-key-file", "--api-token-file", "--token-file"):
            path = flags.get(flag, "")
            mount = next((m for p, m in agent_mounts.items() if path.startswith(p + "/")), {})
            check(mount.get("readOnly") is True, f"agent {flag}={path!r} is not a file of a read-only mount")
        check(any(p.startswith("--namespace=") or p.startswith("--policy=") for p in agent_container.get("args", [])),
              "the agent follows nothing")
        check(flags.get("--cache-dir") in agent_mounts, "the agent's cache is not a volume")
        readiness = agent_container.get("readinessProbe", {}).get("httpGet", {})
        check(readiness.get("path") == "/healthz" and readiness.get("scheme") == "HTTPS",
              "the agent is not ready by GET /healthz over HTTPS")
        # The token: the pod's ServiceAccount token projected for an audience
        # of the cluster's issuer entry, or a Secret's.
        token_volume = next((v for v in agent_pod.get("spec", {}).get("volumes", []) if v["name"] == "token"), {})
        projected = [s["serviceAccountToken"] for s in token_volume.get("projected", {}).get("sources", [])
                     if "serviceAccountToken" in s]
        if args.agent_token == "projected":
            audiences = {a for entry in settings.get("auth", {}).get("issuers", []) for a in entry.get("audiences", [])}
            check(len(projected) == 1 and projected[0].get("audience") in audiences,
                  f"the agent's token is not a ServiceAccount token for an audience of auth.issuers: {token_volume}")
            check(bool(projected) and flags.get("--token-file") == f"/etc/policyhub/agent/token/{projected[0].get('path')}",
                  f"--token-file={flags.get('--token-file')!r} is not the projected token")
        else:
            check(not projected and "secret" in token_volume, f"the agent's token is not a Secret's: {token_volume}")
        runtime_id = {e["name"]: e for e in agent_container.get("env", [])}.get("POLICYHUB_RUNTIME_ID", {})
        check(runtime_id.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName",
              "the agent's runtime id is not its node's name")
    else:
        check(not daemonsets, "an agent DaemonSet without agent.enabled")

    for problem in problems:
        print(problem)
    if not problems:
        print(f"{len(docs)} objects: " + ", ".join(sorted(f"{kind}×{len(v)}" for kind, v in by_kind.items())))
    return 1 if problems else 0


def cmd_flags(args) -> int:
    problems, checked = [], 0
    for manifest in args.manifests:
        for doc in yaml.safe_load_all(Path(manifest).read_text()):
            pod = (doc or {}).get("spec", {}).get("template", {}).get("spec", {})
            for container in pod.get("initContainers", []) + pod.get("containers", []):
                if "policyhub" not in container.get("image", ""):
                    continue
                # The container's arguments, and those of every exec probe
                # that runs the binary.
                runs = [(container["name"], container.get("args", []))]
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    command = container.get(probe, {}).get("exec", {}).get("command", [])
                    if command[:1] == ["/policyhub"]:
                        runs.append((f"{container['name']} {probe}", command[1:]))
                for name, arguments in runs:
                    run = subprocess.run([args.binary, *arguments, "--help"], capture_output=True, text=True, timeout=30)
                    checked += 1
                    if run.returncode != 0:
                        problems.append(f"{manifest}: {doc['kind']} {name}: {run.stderr.strip()}")
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{checked} containers")
    return 1 if problems or not checked else 0


def toml_value(value) -> str:
    """A value of the rendered configuration as TOML: strings and lists of
    them as JSON (valid TOML), numbers and booleans as they are."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value)


def cmd_identity(args) -> int:
    """The server starts with each rendered [[auth.issuers]] and bindings.toml:
    the same checks as in the cluster (a trusted issuer per binding, claims
    its issuer signs, SPIFFE IDs only with mTLS), with the files of the pod
    replaced by throwaway ones. Discovery may fail here; that is a warning."""
    problems, checked = [], 0
    for manifest in args.manifests:
        docs = [d for d in yaml.safe_load_all(Path(manifest).read_text()) if d]
        data = next((d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"), {})
        if "bindings.toml" not in data:
            continue
        auth = tomllib.loads(data["policyhub.toml"]).get("auth", {})
        spiffe = any("spiffe_id" in b for b in tomllib.loads(data["bindings.toml"]).get("bindings", []))
        with tempfile.TemporaryDirectory(prefix="lint-chart.") as tmp:
            tmp = Path(tmp)
            made = subprocess.run(
                ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", tmp / "key.pem", "-out", tmp / "cert.pem", "-subj", "/CN=localhost",
                 "-addext", "subjectAltName=DNS:localhost", "-days", "1"], capture_output=True, text=True)
            if made.returncode != 0:
                problems.append(f"openssl: {made.stderr.strip()}")
                break
            (tmp / "bindings.toml").write_text(data["bindings.toml"])
            lines = ['listen = "127.0.0.1:0"', f'data_dir = {json.dumps(str(tmp / "data"))}', "", "[auth]",
                     f'bindings_file = {json.dumps(str(tmp / "bindings.toml"))}']
            for entry in auth.get("issuers", []):
                lines += ["", "[[auth.issuers]]"]
                for key, value in entry.items():
                    if key == "ca_file":
                        value = str(tmp / "cert.pem")
                    lines.append(f"{key} = {toml_value(value)}")
            if spiffe:
                lines += ["", "[tls]"] + [f'{key} = {json.dumps(str(tmp / name))}' for key, name in
                                           (("cert_file", "cert.pem"), ("key_file", "key.pem"),
                                            ("client_ca_file", "cert.pem"))]
            (tmp / "policyhub.toml").write_text("\n".join(lines) + "\n")
            server = subprocess.Popen([args.binary, "serve", "--config", tmp / "policyhub.toml"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                      env={"PATH": "/usr/bin:/bin", "RUST_LOG": "info"})
            log = []
            try:
                for line in server.stderr:
                    log.append(line.rstrip())
                    if "serving grpc" in line:
                        break
            finally:
                server.kill()
                server.wait()
            checked += 1
            if not any("serving grpc" in line for line in log):
                problems.append(f"{manifest}: the server refuses its identity settings: " + "\n".join(log[-5:]))
    for problem in problems:
        print(problem)
    if not problems:
        print(f"{checked} configurations")
    return 1 if problems or not checked else 0


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

    documented = {chunk.strip() for chunk in (chart / "README.md").read_text().split("`")[1::2]}

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
    # The sidecar excerpt: the first YAML block with initContainers.
    readme = (chart / "README.md").read_text()
    blocks = [yaml.safe_load(b.split("\n", 1)[1]) for b in readme.split("```yaml")[1:] for b in [b.split("```")[0]]]
    excerpt = next((b["initContainers"][0] for b in blocks if isinstance(b, dict) and "initContainers" in b), {})
    example = yaml.safe_load((chart / "../../examples/agent/sidecar.yaml").read_text())
    sidecar = example["spec"]["template"]["spec"]["initContainers"][0]
    if excerpt.get("args") != sidecar["args"]:
        problems.append("README.md: the sidecar excerpt's args are not those of examples/agent/sidecar.yaml")
    for problem in problems:
        print(problem)
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("template", "lint"):
        command = commands.add_parser(name)
        command.add_argument("chart")
        command.add_argument("-f", "--values", metavar="VALUES", help="a values file, as `helm -f`")
    commands.choices["template"].add_argument("--notes", action="store_true")
    verify = commands.add_parser("verify")
    verify.add_argument("manifest")
    verify.add_argument("--storage", choices=["sqlite", "postgres"], required=True)
    verify.add_argument("--replicas", type=int, required=True)
    verify.add_argument("--agent", action="store_true", help="agent.enabled is set")
    verify.add_argument("--agent-token", choices=["projected", "secret"], default="projected",
                        help="the agent presents its projected ServiceAccount token, or a Secret's")
    verify.add_argument("--bindings", action="append", default=[], metavar="TEXT",
                        help="text the rendered bindings.toml must hold")
    verify.add_argument("--toml", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting the configuration file must hold (VALUE as JSON, else text)")
    flags = commands.add_parser("flags")
    flags.add_argument("binary")
    flags.add_argument("manifests", nargs="+")
    identity = commands.add_parser("identity")
    identity.add_argument("binary")
    identity.add_argument("manifests", nargs="+")
    commands.add_parser("docs").add_argument("chart")
    commands.add_parser("version")
    args = parser.parse_args()
    if args.command == "version":
        import helm_sdkpy

        print(helm_sdkpy.get_version())
        return 0
    return {"template": cmd_template, "lint": cmd_lint, "verify": cmd_verify, "flags": cmd_flags, "identity": cmd_identity,
            "docs": cmd_docs}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
