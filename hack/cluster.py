#!/usr/bin/env python3
"""Start and stop a real, small Kubernetes control plane for tests.

    python3 hack/cluster.py up   [--state-dir .cluster] [--bin-dir .cluster/bin] [--nodes 3] [--node kwok|real]
    python3 hack/cluster.py down [--state-dir .cluster]
    python3 hack/cluster.py status [--state-dir .cluster]
    python3 hack/cluster.py load [--state-dir .cluster] ARCHIVE...

`up` runs etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
(which plays the kubelet for a few fake nodes) as plain processes on 127.0.0.1,
on ports that were free at start, so several clusters can run side by side with
different state dirs. It waits until the API is ready and every node is Ready,
writes STATE/kubeconfig and prints `export KUBECONFIG=...`.

`up --node real` runs the same control plane with one real node instead of kwok's
(containerd + runc, kubelet, kube-proxy and CoreDNS in namespaces of their own; see
hack/node.py): pods really run. The API server then listens on the node link's
machine-side address, where pods reach it through the `kubernetes` Service. One real
node runs on a machine at a time. `load` imports image archives into its containerd.

`down` stops, by process id, exactly the processes `up` recorded, then removes
the state dir (except a `bin/` folder inside it, which holds links to the
cached binaries).

Standard library only, so it runs before any virtualenv exists. The binaries
come from hack/tools/build.sh; see docs/control-plane.md.
"""
import argparse
import base64
import concurrent.futures
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import node as real_node  # noqa: E402 - hack/node.py, next to this file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARIES = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]
# Start order; `down` stops in reverse so nothing loses its API server first.
COMPONENTS = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]
# Every address comes from the benchmarking range 198.18.0.0/15 (see hack/node.py), never
# from ranges a real network around this machine may use.
SERVICE_CIDR = "198.19.0.0/16"
KUBERNETES_SERVICE_IP = "198.19.0.1"  # the first address of SERVICE_CIDR
# kwok hands out pod IPs from here; apart from the real node's pods and the services.
POD_CIDR = "198.18.128.1/17"
KWOK_NODE_IP = "198.18.127.254"
# Static volumes for the real node's PersistentVolumeClaims: the chart's Redis and
# PostgreSQL StatefulSets bind them for real (there is no cloud disk provisioner here).
STORAGE_CLASS = "stalk-local"
VOLUMES = 16
VOLUME_SIZE = "8Gi"
# Fake nodes get a realistic, uniform capacity so scheduling behaves like a real pool.
NODE_CAPACITY = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}
NODE_ALLOCATABLE = {"cpu": "7800m", "memory": "31Gi", "pods": "110", "ephemeral-storage": "95Gi"}
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")


class ClusterError(Exception):
    pass


def log(msg):
    print(f"cluster: {msg}", flush=True)


# --- state -----------------------------------------------------------------

class State:
    """Paths inside one cluster's state dir."""

    def __init__(self, root):
        self.root = os.path.abspath(root)
        self.pki = os.path.join(self.root, "pki")
        self.logs = os.path.join(self.root, "logs")
        self.etcd_data = os.path.join(self.root, "etcd")
        self.kubeconfig = os.path.join(self.root, "kubeconfig")
        self.info = os.path.join(self.root, "cluster.json")

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def load(self):
        try:
            with open(self.info) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def save(self, info):
        tmp = self.info + ".tmp"
        with open(tmp, "w") as f:
            json.dump(info, f, indent=2)
        os.replace(tmp, self.info)


def free_ports(n):
    """n distinct ports that are free on 127.0.0.1 right now.

    All sockets stay open until every port is picked so the kernel cannot hand
    out the same port twice. Another program could still take one before our
    components bind it; `up` then fails with that component's log, and a retry
    picks new ports.
    """
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# --- certificates ----------------------------------------------------------

def openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args[:2])} failed: {r.stderr.strip()}")


def make_pki(pki, real=False):
    """CA, API server serving cert, client certs and the service-account key pair.

    Client identities follow kubeadm: the controller-manager and scheduler get
    the user names the default RBAC policy grants, the admin is in
    system:masters. kwok also gets system:masters: it writes status for nodes
    and pods cluster-wide, and there is no built-in role for a fake kubelet.
    """
    os.makedirs(pki, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650",
            "-subj", "/CN=stalk-test-ca", cwd=pki)

    def issue(name, subject, extensions):
        with open(os.path.join(pki, f"{name}.ext"), "w") as f:
            f.write(extensions)
        openssl("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", subject, cwd=pki)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "3650", "-extfile", f"{name}.ext",
                "-out", f"{name}.crt", cwd=pki)

    # Pods reach the API server as the `kubernetes` Service, and on the real node's link.
    sans = ("DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,"
            f"DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:{KUBERNETES_SERVICE_IP},"
            f"IP:{real_node.HOST_IP}")
    issue("apiserver", "/CN=kube-apiserver",
          f"subjectAltName={sans}\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
          "extendedKeyUsage=serverAuth\n")
    client = "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"
    issue("admin", "/O=system:masters/CN=stalk-admin", client)
    issue("controller-manager", "/CN=system:kube-controller-manager", client)
    issue("scheduler", "/CN=system:kube-scheduler", client)
    issue("kwok", "/O=system:masters/CN=kwok", client)
    if real:
        # The real node's identities, as kubeadm names them: the Node authorizer and the
        # NodeRestriction admission plugin hold the kubelet to its own node and pods.
        issue("kubelet", f"/O=system:nodes/CN=system:node:{real_node.NODE_NAME}", client)
        issue("kubelet-serving", f"/CN={real_node.NODE_NAME}",
              f"subjectAltName=DNS:{real_node.NODE_NAME},IP:{real_node.NODE_IP}\n"
              "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
        issue("kube-proxy", "/CN=system:kube-proxy", client)
        issue("coredns", "/CN=stalk:coredns", client)
        # The API server calls the kubelet (logs, exec, port-forward) as this user.
        issue("apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client", client)
    # The aggregation layer ("front proxy") has its own CA, as in kubeadm: the API
    # server presents front-proxy-client when proxying to aggregated API servers,
    # and the controller-manager and scheduler read this CA to trust such requests
    # (without it they log "missing content for CA bundle" forever).
    openssl("req", "-x509", *ec, "-keyout", "front-proxy-ca.key", "-out", "front-proxy-ca.crt",
            "-days", "3650", "-subj", "/CN=stalk-test-front-proxy-ca", cwd=pki)
    with open(os.path.join(pki, "front-proxy-client.ext"), "w") as f:
        f.write(client)
    openssl("req", "-new", *ec, "-keyout", "front-proxy-client.key", "-out", "front-proxy-client.csr",
            "-subj", "/CN=front-proxy-client", cwd=pki)
    openssl("x509", "-req", "-in", "front-proxy-client.csr", "-CA", "front-proxy-ca.crt",
            "-CAkey", "front-proxy-ca.key", "-CAcreateserial", "-days", "3650",
            "-extfile", "front-proxy-client.ext", "-out", "front-proxy-client.crt", cwd=pki)
    # The API server verifies service-account tokens with sa.pub; the
    # controller-manager and the API server's TokenRequest sign them with sa.key.
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
            "-out", "sa.key", cwd=pki)
    openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


def write_kubeconfig(path, server, pki, user):
    def b64(name):
        with open(os.path.join(pki, name), "rb") as f:
            return base64.b64encode(f.read()).decode()

    # JSON is valid YAML; every kubeconfig reader accepts it.
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "stalk-test", "cluster": {
            "server": server, "certificate-authority-data": b64("ca.crt")}}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(f"{user}.crt"),
            "client-key-data": b64(f"{user}.key")}}],
        "contexts": [{"name": "stalk-test", "context": {"cluster": "stalk-test", "user": user}}],
        "current-context": "stalk-test",
    }
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
    os.chmod(path, 0o600)


# --- talking to the API server with the standard library -------------------

class Api:
    def __init__(self, server, pki):
        self.server = server
        self.ctx = ssl.create_default_context(cafile=os.path.join(pki, "ca.crt"))
        self.ctx.load_cert_chain(os.path.join(pki, "admin.crt"), os.path.join(pki, "admin.key"))

    def request(self, method, path, body=None, content_type="application/json"):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, context=self.ctx, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw.startswith(b"{") else raw.decode()


# --- processes -------------------------------------------------------------

def start(state, name, argv):
    """Start one component detached from our session, logging to STATE/logs/NAME.log."""
    out = open(os.path.join(state.logs, f"{name}.log"), "ab")
    # A new session keeps the cluster alive after `make` (our parent) exits and
    # keeps Ctrl-C in the caller's terminal from reaching it.
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=state.root)
    out.close()
    return proc


def alive(pid, state_root):
    """True if pid runs and is one of ours: its command line names our state dir.

    The check keeps `down` from signalling an unrelated process that reused
    a pid after our component died.
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().decode(errors="replace")
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state_root in cmdline


def log_tail(state, name, lines=15):
    try:
        with open(os.path.join(state.logs, f"{name}.log"), errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def wait_for(what, check, deadline, state, procs):
    """Poll check() until it returns a true value or the deadline passes.

    Fails at once, with the component's log tail, if a component exited.
    """
    last_error = None
    while True:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise ClusterError(f"{name} exited (status {proc.returncode}) while waiting for {what}; "
                                   f"last lines of {state.logs}/{name}.log:\n{log_tail(state, name)}")
        try:
            result = check()
            if result:
                return result
        except (OSError, urllib.error.URLError, ssl.SSLError, ValueError, KeyError) as e:
            last_error = e
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out waiting for {what}"
                               + (f" (last error: {last_error})" if last_error else ""))
        time.sleep(0.2)


# --- up / down -------------------------------------------------------------

def component_args(state, bin_dir, ports, real=False):
    pki = state.pki
    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    # --authorization-always-allow-paths lets probes hit /healthz without a client cert.
    serving = ["--bind-address=127.0.0.1", "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics"]
    return {
        "etcd": [
            f"{bin_dir}/etcd", "--name=stalk-test", f"--data-dir={state.etcd_data}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{ports['etcd-peer']}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{ports['etcd-peer']}",
            f"--initial-cluster=stalk-test=http://127.0.0.1:{ports['etcd-peer']}",
            # Test data is disposable; skipping fsync makes etcd far faster on slow disks.
            "--unsafe-no-fsync", "--quota-backend-bytes=2147483648",
            "--log-level=warn",
        ],
        "kube-apiserver": [
            f"{bin_dir}/kube-apiserver",
            f"--etcd-servers={etcd_url}",
            *(api_server_address_flags(pki) if real else [
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
                # The endpoint reconciler refuses a loopback advertise address ("may not be
                # in the loopback range"); nothing runs inside a kwok cluster that would
                # need the `kubernetes` Service's endpoints, so skip them.
                "--endpoint-reconciler-type=none"]),
            f"--secure-port={ports['kube-apiserver']}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki}/apiserver.crt", f"--tls-private-key-file={pki}/apiserver.key",
            f"--client-ca-file={pki}/ca.crt",
            f"--requestheader-client-ca-file={pki}/front-proxy-ca.crt",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki}/front-proxy-client.crt",
            f"--proxy-client-key-file={pki}/front-proxy-client.key",
            "--authorization-mode=Node,RBAC",
            # The default plugin set (NamespaceLifecycle, LimitRanger, ServiceAccount,
            # DefaultTolerationSeconds, ResourceQuota, Priority, webhooks, ...) plus
            # what kubeadm adds.
            "--enable-admission-plugins=NodeRestriction",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki}/sa.pub",
            f"--service-account-signing-key-file={pki}/sa.key",
            "--allow-privileged=true",
            # Watch caches size themselves (they start small and grow with the number
            # of objects); --default-watch-cache-size is a deprecated no-op, so there
            # is nothing to shrink. Events are write-mostly: no cache for them.
            "--watch-cache-sizes=events#0,events.events.k8s.io#0",
            "--profiling=false",
            "--v=1",
        ],
        "kube-controller-manager": [
            f"{bin_dir}/kube-controller-manager",
            f"--kubeconfig={state.path('controller-manager.kubeconfig')}",
            f"--authentication-kubeconfig={state.path('controller-manager.kubeconfig')}",
            f"--authorization-kubeconfig={state.path('controller-manager.kubeconfig')}",
            "--leader-elect=false", *serving, f"--secure-port={ports['kube-controller-manager']}",
            # "*" is the default set of a real cluster: service-account tokens,
            # deployment, replicaset, endpointslice, garbage collector, namespace, ...
            "--controllers=*",
            # Like kubeadm: each controller acts with its own service account, so
            # RBAC applies to controllers as it does in production.
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki}/sa.key",
            f"--root-ca-file={pki}/ca.crt",
            f"--cluster-signing-cert-file={pki}/ca.crt", f"--cluster-signing-key-file={pki}/ca.key",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--profiling=false", "--v=1",
        ],
        "kube-scheduler": [
            f"{bin_dir}/kube-scheduler",
            f"--kubeconfig={state.path('scheduler.kubeconfig')}",
            f"--authentication-kubeconfig={state.path('scheduler.kubeconfig')}",
            f"--authorization-kubeconfig={state.path('scheduler.kubeconfig')}",
            "--leader-elect=false", *serving, f"--secure-port={ports['kube-scheduler']}",
            "--profiling=false", "--v=1",
        ],
        "kwok": [
            f"{bin_dir}/kwok",
            f"--kubeconfig={state.path('kwok.kubeconfig')}",
            # kwokctl's default stages (made by hack/tools/build.sh from the pinned
            # kwok module): nodes become Ready and keep a lease, pods go Running+Ready
            # and are removed when deleted.
            f"--config={bin_dir}/kwok-stages.yaml",
            # Only nodes we create and annotate are fake; anything else is left alone.
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_ANNOTATION[0]}={KWOK_ANNOTATION[1]}",
            f"--cidr={POD_CIDR}", f"--node-ip={KWOK_NODE_IP}",
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{ports['kwok']}",
        ],
    }


def api_server_address_flags(pki):
    """With a real node: listen on the node link, where pods reach the API server.

    The endpoint reconciler then publishes that address as the `kubernetes` Service's
    endpoint, and the API server calls the kubelet (logs, exec, port-forward) at the node's
    InternalIP with a client certificate the kubelet trusts.
    """
    return [f"--bind-address={real_node.HOST_IP}", f"--advertise-address={real_node.HOST_IP}",
            f"--kubelet-client-certificate={pki}/apiserver-kubelet-client.crt",
            f"--kubelet-client-key={pki}/apiserver-kubelet-client.key",
            "--kubelet-preferred-address-types=InternalIP"]


def node_manifest(name):
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_ANNOTATION[0]: KWOK_ANNOTATION[1]},
            "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "type": "kwok",
            },
        },
        "status": {
            "capacity": NODE_CAPACITY,
            "allocatable": NODE_ALLOCATABLE,
            "nodeInfo": {"architecture": "amd64", "operatingSystem": "linux",
                         "kubeletVersion": "fake", "containerRuntimeVersion": "kwok"},
        },
    }


def node_ready(node):
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in node.get("status", {}).get("conditions") or [])


def running_pids(state):
    info = state.load()
    if not info:
        return {}
    return {n: p for n, p in info["pids"].items() if alive(p, state.root)}


def cmd_up(args):
    t0 = time.monotonic()
    state = State(args.state_dir)
    bin_dir = os.path.abspath(args.bin_dir)
    real = args.node == "real"
    kwok_nodes = 0 if real else args.nodes
    missing = [b for b in BINARIES + (real_node.BINARIES if real else [])
               if not os.access(os.path.join(bin_dir, b), os.X_OK)]
    if not os.path.isfile(os.path.join(bin_dir, "kwok-stages.yaml")):
        missing.append("kwok-stages.yaml")
    if missing:
        raise ClusterError(f"missing binaries in {bin_dir}: {', '.join(missing)} "
                           "(build them with `make cluster-bins`)")

    info = state.load()
    if info:
        if set(running_pids(state)) >= set(info.get("components", COMPONENTS)):
            log(f"already running in {state.root}")
            print(f"export KUBECONFIG={state.kubeconfig}")
            return
        raise ClusterError(f"{state.root} holds a cluster that is not fully running; "
                           f"run `python3 hack/cluster.py down --state-dir {state.root}` first")

    for prefix in ("/run/", "/var/lib/", "/var/log/"):
        if real and (state.root + "/").startswith(prefix):
            raise ClusterError(f"a real node's state dir cannot be under {prefix} (the node mounts its own there)")
    for d in (state.root, state.logs):
        os.makedirs(d, exist_ok=True)
    make_pki(state.pki, real=real)

    names = ["etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
             "kubelet-healthz", "kube-proxy-healthz", "kube-proxy-metrics"]
    ports = dict(zip(names, free_ports(len(names))))
    host = real_node.HOST_IP if real else "127.0.0.1"
    server = f"https://{host}:{ports['kube-apiserver']}"
    write_kubeconfig(state.kubeconfig, server, state.pki, "admin")
    users = ["controller-manager", "scheduler"] + (["kubelet", "kube-proxy", "coredns"] if real else ["kwok"])
    for user in users:
        write_kubeconfig(state.path(f"{user}.kubeconfig"), server, state.pki, user)

    components = [c for c in COMPONENTS if c != "kwok" or not real]
    argv = component_args(state, bin_dir, ports, real=real)
    procs = {}  # name -> Popen, for this run; `down` works from the saved pids
    info = {"server": server, "ports": ports, "pids": {}, "bin_dir": bin_dir, "node": args.node,
            "components": components}
    node = real_node.Node(state.root, bin_dir) if real else None

    def record(name):
        procs[name] = start(state, name, argv[name])
        info["pids"][name] = procs[name].pid
        # Saved after every start so `down` can clean up even if `up` dies midway.
        state.save(info)

    api = Api(server, state.pki)
    deadline = time.monotonic() + args.timeout
    try:
        if node:
            # The node's link must exist before the API server binds its address.
            state.save(info)
            node.prepare(server, ports)
            log(f"node namespaces ready; link {real_node.HOST_IP} <-> {real_node.NODE_IP}")
        record("etcd")
        wait_for("etcd", lambda: json.loads(urllib.request.urlopen(
            f"http://127.0.0.1:{ports['etcd']}/health", timeout=2).read())["health"] == "true",
            deadline, state, procs)
        log(f"etcd ready on 127.0.0.1:{ports['etcd']}")

        record("kube-apiserver")
        wait_for("kube-apiserver /readyz", lambda: api.request("GET", "/readyz") == "ok",
                 deadline, state, procs)
        log(f"kube-apiserver ready at {server}")

        for name in components[2:]:
            record(name)

        if node:
            start_real_node(node, api, state, procs, info, deadline)

        for i in range(kwok_nodes):
            try:
                api.request("POST", "/api/v1/nodes", node_manifest(f"kwok-node-{i}"))
            except urllib.error.HTTPError as e:
                if e.code != 409:  # already exists
                    raise ClusterError(f"creating node kwok-node-{i}: HTTP {e.code} {e.read()[:300]!r}")
        if kwok_nodes:
            wait_for(f"{kwok_nodes} nodes Ready",
                     lambda: sum(node_ready(n) for n in api.request("GET", "/api/v1/nodes")["items"])
                     >= kwok_nodes, deadline, state, procs)
            log(f"{kwok_nodes} kwok nodes Ready")

        # Pods can only be admitted once the controller-manager created the
        # namespace's default ServiceAccount; tests create pods right away.
        wait_for("default ServiceAccount",
                 lambda: api.request("GET", "/api/v1/namespaces/default/serviceaccounts/default"),
                 deadline, state, procs)
    except BaseException:
        log(f"start failed; stopped what was started. Logs: {state.logs}; "
            f"`python3 hack/cluster.py down --state-dir {state.root}` removes the state")
        # Signal our children directly: one may not have exec'd yet, and then its
        # command line does not name the state dir that stop_and_remove() checks for.
        for name in reversed(list(procs)):
            terminate(name, procs[name])
        if node:
            node.stop(log)
        raise

    log(f"ready in {time.monotonic() - t0:.1f}s; logs in {state.logs}")
    print(f"export KUBECONFIG={state.kubeconfig}")


def terminate(name, proc, grace=10.0):
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        log(f"{name} (pid {proc.pid}) ignored SIGTERM for {grace:.0f}s; killing it")
        proc.kill()
        proc.wait()


def stop_and_remove(state, grace=10.0):
    """Stop the cluster's processes and remove its state; returns what the machine kept of it."""
    info = state.load()
    pids = (info or {}).get("pids", {})
    leftovers = []

    def stop_control_plane():
        # One at a time, clients before servers: an API server whose etcd is already
        # gone hangs in its graceful shutdown instead of exiting.
        for name in reversed(COMPONENTS):
            pid = pids.get(name)
            if not pid or not alive(pid, state.root):
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while alive(pid, state.root) and time.monotonic() < deadline:
                time.sleep(0.05)
            if alive(pid, state.root):
                log(f"{name} (pid {pid}) ignored SIGTERM for {grace:.0f}s; killing it")
                os.kill(pid, signal.SIGKILL)

    if (info or {}).get("node") == "real":
        # The node's processes go first (its kubelet and containers talk to the API server),
        # the control plane next, while the API server's address is still on the node's link.
        leftovers = real_node.Node(state.root, info.get("bin_dir", "")).stop(log, grace,
                                                                             before_unplug=stop_control_plane)
    else:
        stop_control_plane()
    if os.path.isdir(state.root):
        # bin/ only holds links to the build cache; keep it so the next `up` needs no build.
        for entry in os.listdir(state.root):
            if entry != "bin":
                p = os.path.join(state.root, entry)
                shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)
        if not os.listdir(state.root):
            os.rmdir(state.root)
    return leftovers


def cmd_down(args):
    state = State(args.state_dir)
    info = state.load()
    if not info:
        log(f"no cluster in {state.root}; nothing to stop")
        return
    leftovers = stop_and_remove(state)
    log(f"stopped; removed the state in {state.root}")
    if leftovers:
        raise ClusterError("the machine is not as it was before the node started:\n  " + "\n  ".join(leftovers))
    if info.get("node") == "real":
        log("the machine is as it was before the node started (mounts, links, iptables, cgroups, sysctls)")


def cmd_status(args):
    state = State(args.state_dir)
    info = state.load()
    if not info:
        log(f"no cluster in {state.root}")
        sys.exit(1)
    up = running_pids(state)
    expected = info.get("components", COMPONENTS)
    rows = [(name, info["pids"].get(name), name in up) for name in expected]
    if info.get("node") == "real":
        node_pids = (real_node.Node(state.root, info["bin_dir"]).load() or {}).get("pids", {})
        rows += [(f"node/{name}", pid, alive(pid, state.root)) for name, pid in node_pids.items()]
    for name, pid, running in rows:
        print(f"{name:25} pid {pid or '-':>7}  {'running' if running else 'NOT RUNNING'}")
    print(f"export KUBECONFIG={state.kubeconfig}")
    sys.exit(0 if all(running for _, _, running in rows) else 1)


def cmd_load(args):
    """Import image archives into the real node's containerd (what `make image` builds)."""
    state = State(args.state_dir)
    info = state.load()
    if not info or info.get("node") != "real":
        raise ClusterError(f"no real node in {state.root} (start one with `make cluster-up NODE=real`)")
    node = real_node.Node(state.root, info["bin_dir"])
    archives = list(args.archives)
    if args.images:
        with open(args.images) as f:
            archives += [image["archive"] for image in json.load(f).values()]
    if not archives:
        raise ClusterError("nothing to load: give image archives or --images images.json")
    for archive in archives:
        if not os.path.isfile(archive):
            raise ClusterError(f"no image archive at {archive}")

    def load(archive):
        t = time.monotonic()
        node.import_image(os.path.abspath(archive))
        log(f"loaded {archive} in {time.monotonic() - t:.1f}s")

    # One import is mostly waiting on unpacking into snapshots: load them side by side.
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        try:
            list(pool.map(load, archives))
        except real_node.NodeError as e:
            raise ClusterError(str(e))
    log("images on the node: " + ", ".join(i for i in node.images() if not i.startswith("localhost/stalk-pause")))


# RBAC for CoreDNS on the real node: what its kubernetes plugin watches, read-only.
COREDNS_RBAC = [
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
     "metadata": {"name": "stalk:coredns"},
     "rules": [{"apiGroups": [""], "resources": ["services", "namespaces", "pods"], "verbs": ["list", "watch"]},
               {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]},
    {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
     "metadata": {"name": "stalk:coredns"},
     "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "stalk:coredns"},
     "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "stalk:coredns"}]},
]


def storage_manifests(node):
    """A default StorageClass and static hostPath volumes inside the state dir."""
    yield "/apis/storage.k8s.io/v1/storageclasses", {
        "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
        "metadata": {"name": STORAGE_CLASS,
                     "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "kubernetes.io/no-provisioner", "volumeBindingMode": "WaitForFirstConsumer",
        "reclaimPolicy": "Retain"}
    for i in range(VOLUMES):
        path = node.path("volumes", f"pv-{i:02d}")
        os.makedirs(path, exist_ok=True)
        # Pods run as their own non-root users; a hostPath volume has no fsGroup handling.
        os.chmod(path, 0o777)
        yield "/api/v1/persistentvolumes", {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": f"stalk-local-{i:02d}", "labels": {"stalk.dev/volume": "local"}},
            "spec": {"capacity": {"storage": VOLUME_SIZE}, "accessModes": ["ReadWriteOnce"],
                     "storageClassName": STORAGE_CLASS, "persistentVolumeReclaimPolicy": "Retain",
                     "hostPath": {"path": path, "type": "Directory"}}}


def start_real_node(node, api, state, procs, info, deadline):
    """Start the node's processes once the API server answers; wait for the node to be Ready."""
    for path, body in [("/apis/rbac.authorization.k8s.io/v1/clusterroles", COREDNS_RBAC[0]),
                       ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", COREDNS_RBAC[1]),
                       *storage_manifests(node)]:
        try:
            api.request("POST", path, body)
        except urllib.error.HTTPError as e:
            if e.code != 409:
                raise ClusterError(f"creating {body['kind']} {body['metadata']['name']}: HTTP {e.code} {e.read()[:300]!r}")
    try:
        procs.update(node.start(lambda name, argv: start(state, name, argv)))
    except real_node.NodeError as e:
        raise ClusterError(str(e))
    wait_for(f"node {real_node.NODE_NAME} Ready",
             lambda: node_ready(api.request("GET", f"/api/v1/nodes/{real_node.NODE_NAME}")),
             deadline, state, procs)
    log(f"real node {real_node.NODE_NAME} Ready ({real_node.NODE_IP}; pods {real_node.POD_CIDR})")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("up", "down", "status", "load"):
        s = sub.add_parser(name)
        s.add_argument("--state-dir", default=os.path.join(REPO, ".cluster"),
                       help="where certs, etcd data, logs and the kubeconfig live (default: .cluster)")
        if name == "up":
            s.add_argument("--bin-dir", default=os.path.join(REPO, ".cluster", "bin"))
            s.add_argument("--nodes", type=int, default=3, help="number of kwok fake nodes")
            s.add_argument("--node", choices=("kwok", "real"), default="kwok",
                           help="kwok fake nodes (default), or one real node where pods run")
            s.add_argument("--timeout", type=float, default=120.0,
                           help="seconds to wait for the cluster to become ready")
        if name == "load":
            s.add_argument("archives", nargs="*", help="image archives (OCI or docker) to import")
            s.add_argument("--images", help="an images.json of hack/images.py: load every archive it names")
    args = p.parse_args()
    try:
        {"up": cmd_up, "down": cmd_down, "status": cmd_status, "load": cmd_load}[args.command](args)
    except (ClusterError, real_node.NodeError) as e:
        sys.exit(f"cluster: error: {e}")


if __name__ == "__main__":
    main()
