#!/usr/bin/env python3
"""Cross-checks of one rendered overlay that no schema can express.

Run by `.ci/deploy-check` after `kubectl kustomize` (needs PyYAML, which the
pinned validator environment brings):

    check_manifests.py RENDERED.yaml --overlay okta --readme README.md \
        --uid 65532 --gid 65532 --port 8443 [--env-out ENV0 --tls-dir DIR]

It checks the pod layout the gate relies on (only the gate's port is
exposed, the upstream is on loopback, secrets come from a Secret, probes hit
the gate's health routes over HTTPS, the security context matches the
image's USER), that every setting is one the README documents, and, with
--env-out, writes the gate container's environment (NUL-separated KEY=VALUE,
secrets replaced by generated test values, TLS paths moved to --tls-dir) so
that the real binary can be started with it.
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import os
import re
import sys
from urllib.parse import urlsplit

import yaml

EXPECTED_KINDS = {
    "Namespace",
    "ServiceAccount",
    "ConfigMap",
    "Deployment",
    "Service",
    "NetworkPolicy",
    "PodDisruptionBudget",
}
# What each overlay is for; an overlay not listed here only needs a valid value.
EXPECTED_PROVIDER = {"okta": "OKTA", "entra": "MICROSOFT"}
SECRET_VARS = ("CT_SSO_CLIENT_SECRET", "CT_COOKIE_SECRET")
GATE = "ssogate"
UPSTREAM_PORT = 1080

problems: list[str] = []


def bad(msg: str) -> None:
    problems.append(msg)


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind):
    found = by_kind(docs, kind)
    if len(found) != 1:
        bad(f"expected exactly one {kind}, found {len(found)}")
        return {}
    return found[0]


def selects(selector: dict, labels: dict) -> bool:
    match = (selector or {}).get("matchLabels") or {}
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def port_number(container: dict, port) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("rendered")
    ap.add_argument("--overlay", required=True)
    ap.add_argument("--readme", required=True)
    ap.add_argument("--uid", type=int, required=True)
    ap.add_argument("--gid", type=int, required=True)
    ap.add_argument("--port", type=int, required=True, help="the Dockerfile's EXPOSE")
    ap.add_argument("--secret-example", help="secret.example.yaml: must hold every Secret and key the pod references")
    ap.add_argument("--env-out")
    ap.add_argument("--tls-dir")
    args = ap.parse_args()

    with open(args.rendered, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    with open(args.readme, encoding="utf-8") as f:
        documented = set(re.findall(r"`(CT_[A-Z0-9_]+|RUST_LOG)`", f.read()))

    kinds = {d.get("kind") for d in docs}
    if "Secret" in kinds:
        bad("a Secret is rendered: secrets are created out of band (secret.example.yaml), never applied with -k")
    if kinds != EXPECTED_KINDS:
        bad(f"kinds {sorted(kinds)} differ from the expected {sorted(EXPECTED_KINDS)}")

    ns = one(docs, "Namespace").get("metadata", {}).get("name")
    for d in docs:
        if d.get("kind") == "Namespace":
            continue
        got = d.get("metadata", {}).get("namespace")
        if got != ns or got in (None, "default"):
            bad(f"{d.get('kind')}/{d['metadata'].get('name')} is in namespace {got!r}, not {ns!r}")

    configmaps = {c["metadata"]["name"]: c.get("data") or {} for c in by_kind(docs, "ConfigMap")}
    dep = one(docs, "Deployment")
    pod = dep.get("spec", {}).get("template", {})
    labels = pod.get("metadata", {}).get("labels") or {}
    spec = pod.get("spec") or {}
    if not selects(dep.get("spec", {}).get("selector"), labels):
        bad("the Deployment's selector does not match its pod labels")
    containers = {c["name"]: c for c in spec.get("containers") or []}
    gate = containers.get(GATE)
    if gate is None:
        bad(f"no container named {GATE!r}")
        gate = {}
    if len(containers) != 2:
        bad(f"expected the gate and the collaboration server in the pod, found {sorted(containers)}")

    # --- pod-level security ---------------------------------------------------
    if spec.get("automountServiceAccountToken") is not False:
        bad("automountServiceAccountToken must be false")
    psc = spec.get("securityContext") or {}
    if psc.get("runAsNonRoot") is not True:
        bad("pod securityContext.runAsNonRoot must be true")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        bad("pod seccompProfile must be RuntimeDefault")
    for name, c in containers.items():
        sc = c.get("securityContext") or {}
        where = f"container {name}"
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            bad(f"{where}: runAsNonRoot must be true")
        if sc.get("readOnlyRootFilesystem") is not True:
            bad(f"{where}: readOnlyRootFilesystem must be true")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad(f"{where}: allowPrivilegeEscalation must be false")
        if sc.get("privileged"):
            bad(f"{where}: must not be privileged")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []) or caps.get("add"):
            bad(f"{where}: capabilities must drop ALL and add none")
        if (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            bad(f"{where}: seccompProfile must be RuntimeDefault")
        res = c.get("resources") or {}
        for kind in ("requests", "limits"):
            for r in ("cpu", "memory"):
                if r not in (res.get(kind) or {}):
                    bad(f"{where}: resources.{kind}.{r} is missing")
        for p in c.get("ports") or []:
            if p.get("containerPort") == UPSTREAM_PORT:
                bad(f"{where}: declares the upstream's port {UPSTREAM_PORT}; nothing outside the pod may address it")
    uid = (gate.get("securityContext") or {}).get("runAsUser", psc.get("runAsUser"))
    gid = (gate.get("securityContext") or {}).get("runAsGroup", psc.get("runAsGroup"))
    if uid != args.uid or gid != args.gid:
        bad(f"the gate runs as {uid}:{gid} but the Dockerfile's USER is {args.uid}:{args.gid}")

    # --- the gate's environment -----------------------------------------------
    env: dict[str, str] = {}
    for src in gate.get("envFrom") or []:
        ref = (src.get("configMapRef") or {}).get("name")
        if src.get("secretRef"):
            bad("the gate takes a whole Secret with envFrom; reference CT_SSO_CLIENT_SECRET and CT_COOKIE_SECRET by key")
        if ref is not None:
            if ref not in configmaps:
                bad(f"the gate's envFrom names ConfigMap {ref!r}, which is not rendered (name reference broken)")
            env.update(configmaps.get(ref, {}))
    secret_refs = {}
    for e in gate.get("env") or []:
        name, vf = e["name"], e.get("valueFrom") or {}
        if "value" in e:
            env[name] = str(e["value"])
        elif "configMapKeyRef" in vf:
            ref = vf["configMapKeyRef"]
            if ref["key"] not in configmaps.get(ref["name"], {}):
                bad(f"env {name}: ConfigMap {ref['name']!r} has no key {ref['key']!r}")
            env[name] = configmaps.get(ref["name"], {}).get(ref["key"], "")
        elif "secretKeyRef" in vf:
            secret_refs[name] = vf["secretKeyRef"]
            env[name] = "<secret>"
    for var in SECRET_VARS:
        if var not in secret_refs:
            bad(f"{var} must come from a Secret (env valueFrom.secretKeyRef)")
        for cm, data in configmaps.items():
            if var in data:
                bad(f"{var} is in ConfigMap {cm}: secrets belong in the Secret")
    for var in env:
        if var not in documented:
            bad(f"the gate is given {var}, which README.md does not document (typo or stale name?)")

    for var in ("CT_SERVER_URL", "CT_SSO_AUTHORIZATION_ENDPT", "CT_SSO_CLIENT_ID", "CT_UPSTREAM_URL"):
        if not env.get(var):
            bad(f"{var} is not set for the gate")
    if urlsplit(env.get("CT_SERVER_URL", "")).scheme != "https":
        bad("CT_SERVER_URL must be an https:// URL")
    up = urlsplit(env.get("CT_UPSTREAM_URL", ""))
    try:
        loopback = up.hostname == "localhost" or ipaddress.ip_address(up.hostname or "").is_loopback
    except ValueError:
        loopback = False
    if not loopback or up.port != UPSTREAM_PORT:
        bad(f"CT_UPSTREAM_URL must be the in-pod loopback upstream http://127.0.0.1:{UPSTREAM_PORT}")
    provider = env.get("CT_SSO_PROVIDER")
    want = EXPECTED_PROVIDER.get(args.overlay)
    if want and (provider or "").upper() != want:
        bad(f"overlay {args.overlay}: CT_SSO_PROVIDER is {provider!r}, expected {want}")
    if provider and provider.upper() not in ("OKTA", "MICROSOFT"):
        bad(f"CT_SSO_PROVIDER={provider!r}: only OKTA or MICROSOFT are valid")

    listen = env.get("CT_LISTEN_ADDR", "0.0.0.0:8443")
    gate_ports = [p.get("containerPort") for p in gate.get("ports") or []]
    if gate_ports != [args.port] or not listen.endswith(f":{args.port}"):
        bad(f"the gate must listen on and declare exactly the Dockerfile's port {args.port} (ports {gate_ports}, CT_LISTEN_ADDR {listen})")

    # TLS from a read-only Secret volume.
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    tls_mounts = {}
    for m in gate.get("volumeMounts") or []:
        if (volumes.get(m["name"]) or {}).get("secret") and m.get("readOnly") is True:
            tls_mounts[m["mountPath"].rstrip("/")] = m
    for var in ("CT_TLS_CERT_FILE", "CT_TLS_KEY_FILE"):
        path = env.get(var, "")
        if not any(path.startswith(mp + "/") for mp in tls_mounts):
            bad(f"{var}={path!r} is not inside a read-only Secret volume of the gate")

    # Probes on the gate's port, over HTTPS (CT_TLS_* are set).
    for probe, path in (("livenessProbe", "/sso/healthz"), ("readinessProbe", "/sso/readyz")):
        hg = (gate.get(probe) or {}).get("httpGet") or {}
        if hg.get("path") != path or hg.get("scheme") != "HTTPS" or port_number(gate, hg.get("port")) != args.port:
            bad(f"the gate's {probe} must be httpGet {path} scheme HTTPS on port {args.port}, is {hg}")

    # The collaboration server must not see the gate's SSO settings.
    for name, c in containers.items():
        if name == GATE:
            continue
        for src in c.get("envFrom") or []:
            if (src.get("configMapRef") or {}).get("name") in configmaps:
                bad(f"container {name} takes the gate's ConfigMap: it would see CT_SSO_* and try SSO itself")
        for e in c.get("env") or []:
            if e["name"].startswith("CT_SSO_") or e["name"] in SECRET_VARS:
                bad(f"container {name} is given {e['name']}: only the gate does SSO")

    # --- Service, NetworkPolicy, PDB -------------------------------------------
    svc = one(docs, "Service")
    if not selects({"matchLabels": svc.get("spec", {}).get("selector")}, labels):
        bad("the Service does not select the pod")
    for p in svc.get("spec", {}).get("ports") or []:
        target = p.get("targetPort", p.get("port"))
        if port_number(gate, target) != args.port:
            bad(f"Service port {p.get('port')} targets {target!r}, not the gate's port {args.port}")
    np = one(docs, "NetworkPolicy")
    nps = np.get("spec") or {}
    if not selects(nps.get("podSelector"), labels):
        bad("the NetworkPolicy does not select the pod")
    if set(nps.get("policyTypes") or []) != {"Ingress", "Egress"}:
        bad("the NetworkPolicy must govern both Ingress and Egress")
    for rule in nps.get("ingress") or []:
        ports = rule.get("ports") or []
        if not ports or any(p.get("port") != args.port or p.get("protocol", "TCP") != "TCP" for p in ports):
            bad(f"a NetworkPolicy ingress rule admits more than TCP {args.port}: {rule}")
    allowed_egress = {("UDP", 53), ("TCP", 53), ("TCP", 443)}
    for rule in nps.get("egress") or []:
        ports = rule.get("ports") or []
        if not ports or any((p.get("protocol", "TCP"), p.get("port")) not in allowed_egress for p in ports):
            bad(f"a NetworkPolicy egress rule goes beyond DNS and HTTPS: {rule}")
    pdb = one(docs, "PodDisruptionBudget")
    if not selects(pdb.get("spec", {}).get("selector"), labels):
        bad("the PodDisruptionBudget does not select the pod")
    replicas = dep.get("spec", {}).get("replicas", 1)
    min_avail = pdb.get("spec", {}).get("minAvailable")
    if isinstance(min_avail, int) and min_avail >= replicas:
        bad(f"PodDisruptionBudget minAvailable {min_avail} with {replicas} replicas blocks every drain")

    if args.secret_example:
        with open(args.secret_example, encoding="utf-8") as f:
            examples = {
                d["metadata"]["name"]: d for d in yaml.safe_load_all(f) if d and d.get("kind") == "Secret"
            }
        wanted = {(r["name"], r["key"]) for r in secret_refs.values()}
        for v in volumes.values():
            if v.get("secret"):
                wanted |= {(v["secret"]["secretName"], k) for k in ("tls.crt", "tls.key")}
        for name, key in sorted(wanted):
            ex = examples.get(name)
            keys = set((ex or {}).get("stringData") or {}) | set((ex or {}).get("data") or {})
            if key not in keys:
                bad(f"the pod uses key {key!r} of Secret {name!r}, which {args.secret_example} does not show")
            elif ex.get("metadata", {}).get("namespace") != ns:
                bad(f"{args.secret_example}: Secret {name} is not in namespace {ns!r}")

    if args.env_out:
        out = dict(env)
        out["CT_SSO_CLIENT_SECRET"] = "deploy-check-test-client-secret"
        out["CT_COOKIE_SECRET"] = base64.b64encode(os.urandom(32)).decode()
        if args.tls_dir:
            for var, file in (("CT_TLS_CERT_FILE", "tls.crt"), ("CT_TLS_KEY_FILE", "tls.key")):
                out[var] = os.path.join(args.tls_dir, file)
        with open(args.env_out, "wb") as f:
            for k, v in sorted(out.items()):
                f.write(f"{k}={v}".encode() + b"\0")

    if problems:
        for p in problems:
            print(f"  {args.rendered}: {p}", file=sys.stderr)
        return 1
    print(f"  {args.overlay}: {len(docs)} resources; layout, security context, settings and ports agree")
    return 0


if __name__ == "__main__":
    sys.exit(main())
