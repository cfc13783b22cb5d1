"""A real Kubernetes node for the test control plane: containerd + runc, kubelet, kube-proxy, CoreDNS.

Everything the node changes lives in namespaces this module creates, so that stopping it
puts the machine back as it was:

- one **network namespace** for the node, joined to the machine by a veth pair from the
  benchmarking range (machine side ``HOST_IP``, node side ``NODE_IP``). The pods' bridge,
  their veths, every iptables chain kube-proxy and the CNI plugins write, and per-namespace
  sysctls (``ip_forward``, ``route_localnet``) exist only in there. The node has no default
  route, so a pod can reach nothing but the node, its pods, Services and the API server.
- one **mount namespace**, with fresh tmpfs over ``/run``, ``/var/lib`` and ``/var/log``:
  containerd 1.6 keeps fixed paths under ``/run/containerd`` and ``/run/netns``, the kubelet
  writes ``/var/lib/kubelet`` and ``/var/log/containers`` whatever it is told; in here those
  writes vanish with the namespace, and so do the kubelet's volume mounts.

A holder process (``pause``) keeps both namespaces alive; each component is started into
them with ``nsenter``. What cannot be namespaced is recorded and undone by ``stop``: the
kernel sysctls the kubelet sets (``vm.overcommit_memory``, ``kernel.panic``…) and the
``kubepods`` cgroups it creates in every cgroup v1 hierarchy.

Standard library only (it runs before any virtualenv exists); used by hack/cluster.py.
"""
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time

# Addresses: all from 198.18.0.0/15 (RFC 2544, never routed on the internet), none from the
# private ranges that a real network behind this machine might use.
TEST_RANGE = "198.18.0.0/15"     # every address below; blackholed on the machine while a node lives
HOST_IP = "198.18.0.1"          # the machine's end of the veth; the API server listens here
NODE_IP = "198.18.0.2"          # the node's end: kubelet, kube-proxy, CoreDNS
LINK_PREFIX = 30
POD_CIDR = "198.18.1.0/24"      # the real node's pods (CNI bridge cni0, gateway .1)
DNS_IP = NODE_IP                # CoreDNS runs on the node, so pods' resolv.conf names the node
NODE_NAME = "stalk-node"
HOST_LINK = "stalk-node0"       # the veth's name on the machine
CLUSTER_DOMAIN = "cluster.local"
PAUSE_IMAGE = "localhost/stalk-pause:v1"
# An in-memory OCI registry on the node (go-containerregistry's), for skaffold's inner loop:
# skaffold pushes what its custom builder builds and the kubelet pulls it from here.
REGISTRY = f"{NODE_IP}:5000"

# Binaries of the node that hack/tools/build.sh provides (kube, coredns and pause groups).
BINARIES = ["kubelet", "kube-proxy", "coredns", "pause", "registry"]
# Start order; stop goes in reverse.
COMPONENTS = ["containerd", "kubelet", "kube-proxy", "coredns", "registry"]
# What the kubelet changes outside any namespace (kubelet's setupKernelTunables, v1.37):
# recorded before it starts, written back after it stops.
KERNEL_SYSCTLS = ["vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                  "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes"]
CGROUP_ROOT = "/sys/fs/cgroup"
# Debian packages the node needs, by the command that shows each is there.
PACKAGES = {"/usr/bin/containerd": "containerd", "/usr/sbin/runc": "runc", "/usr/bin/ctr": "containerd",
            "/usr/lib/cni/bridge": "containernetworking-plugins", "/usr/bin/nsenter": "util-linux",
            "/usr/sbin/iptables": "iptables", "/usr/sbin/ip": "iproute2"}


class NodeError(Exception):
    pass


def missing_packages():
    """Debian packages the real node needs that are not installed (empty when ready)."""
    return sorted({pkg for path, pkg in PACKAGES.items() if not os.access(path, os.X_OK)})


def run(*argv, check=True, **kw):
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise NodeError(f"`{' '.join(argv)}` failed: {(r.stderr or r.stdout).strip()}")
    return r


# --- what the machine looks like (for stop's own check and the cleanup test) ----------------

def cgroup_hierarchies():
    """The cgroup v1 hierarchies' mount points (cpu, memory, …); the kubelet uses these."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype == "cgroup":
                out.append(fields[4])
    return sorted(out)


def snapshot():
    """What a node could leave behind on the machine, as comparable values.

    Mounts, network links and namespaces, the machine's iptables rules, top-level cgroups,
    the sysctls the kubelet sets, and the fixed paths containerd and the kubelet write.
    ``stop`` compares this with the snapshot taken at ``start``.
    """
    with open("/proc/self/mountinfo") as f:
        mounts = sorted(" ".join(line.split()[3:5]) for line in f)
    links = sorted(line.split(":")[1].strip().split("@")[0]
                   for line in run("ip", "-o", "link", "show").stdout.splitlines())
    iptables = {}
    for tool in ("iptables-nft-save", "iptables-legacy-save"):
        if shutil.which(tool):
            # Counters change all the time; the rules are what matters.
            rules = [line for line in run(tool, check=False).stdout.splitlines()
                     if line and not line.startswith("#")]
            iptables[tool] = [line.split(" [", 1)[0] if line.startswith(":") else line for line in rules]
    cgroups = {}
    for h in cgroup_hierarchies():
        try:
            cgroups[h] = sorted(e for e in os.listdir(h) if os.path.isdir(os.path.join(h, e)))
        except OSError:
            pass
    sysctls = {}
    for name in KERNEL_SYSCTLS:
        try:
            with open(f"/proc/sys/{name}") as f:
                sysctls[name] = f.read().strip()
        except OSError:
            pass
    paths = {p: os.path.lexists(p) for p in
             ("/run/containerd", "/run/netns", "/var/lib/kubelet", "/var/lib/cni", "/var/log/pods",
              "/var/log/containers", "/etc/cni/net.d", "/var/lib/containerd", "/opt/cni")}
    netns = sorted(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else []
    routes = sorted(run("ip", "-4", "route", "show", "table", "all").stdout.splitlines())
    return {"mounts": mounts, "links": links, "iptables": iptables, "cgroups": cgroups,
            "sysctls": sysctls, "paths": paths, "netns": netns, "routes": routes}


def differences(before, after):
    """Readable lines for every way ``after`` differs from ``before`` (empty: the same)."""
    lines = []
    for key in before:
        b, a = before[key], after.get(key)
        if b == a:
            continue
        if isinstance(b, list):
            added = sorted(set(a) - set(b))
            removed = sorted(set(b) - set(a))
            lines += [f"{key}: added {x}" for x in added] + [f"{key}: removed {x}" for x in removed]
        else:
            for sub in sorted(set(b) | set(a)):
                if b.get(sub) != a.get(sub):
                    lines.append(f"{key} {sub}: was {b.get(sub)!r}, now {a.get(sub)!r}")
    return lines


# --- images without a registry ------------------------------------------------------------

def single_file_image(path, binary, name, entrypoint):
    """Write an OCI image archive holding one static binary (the pause image).

    No image can be pulled here and this one needs nothing but its binary, so it is written
    directly in the OCI layout that `ctr images import` reads.
    """
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        # The binary is usually a link into the build cache: store the file it points at.
        info = tar.gettarinfo(os.path.realpath(binary), arcname=os.path.basename(entrypoint))
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        info.mode = 0o755
        with open(os.path.realpath(binary), "rb") as f:
            tar.addfile(info, f)
    layer_tar = layer.getvalue()
    layer_gz = gzip.compress(layer_tar, mtime=0)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Entrypoint": [entrypoint], "User": "65535:65535"},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
    }).encode()

    def blob(data, media_type):
        return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
                "size": len(data)}

    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": blob(config, "application/vnd.oci.image.config.v1+json"),
        "layers": [blob(layer_gz, "application/vnd.oci.image.layer.v1.tar+gzip")],
    }).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        **blob(manifest, "application/vnd.oci.image.manifest.v1+json"),
        "annotations": {"io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}}]}).encode()
    with tarfile.open(path, "w") as tar:
        def add(arcname, data):
            info = tarfile.TarInfo(arcname)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        add("oci-layout", b'{"imageLayoutVersion": "1.0.0"}')
        add("index.json", index)
        for data in (config, manifest, layer_gz):
            add("blobs/sha256/" + hashlib.sha256(data).hexdigest(), data)


# --- the node -------------------------------------------------------------------------------

class Node:
    """One real node's files, inside a cluster's state dir (``STATE/node/``)."""

    def __init__(self, state_root, bin_dir):
        self.root = os.path.join(state_root, "node")
        self.state_root = state_root
        self.bin_dir = bin_dir
        self.logs = os.path.join(state_root, "logs")
        self.socket = os.path.join(self.root, "containerd", "containerd.sock")
        self.info_path = os.path.join(self.root, "node.json")

    def path(self, *parts):
        return os.path.join(self.root, *parts)

    def load(self):
        try:
            with open(self.info_path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def save(self, info):
        tmp = self.info_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(info, f, indent=2)
        os.replace(tmp, self.info_path)

    # -- configuration files --

    def write_configs(self, server, ports):
        os.makedirs(self.path("cni"), exist_ok=True)
        os.makedirs(self.path("kubelet"), exist_ok=True)
        os.makedirs(self.path("pod-logs"), exist_ok=True)
        pki = os.path.join(self.state_root, "pki")
        with open(self.path("containerd.toml"), "w") as f:
            f.write(f"""version = 2
root = "{self.path('containerd', 'root')}"
state = "{self.path('containerd', 'state')}"
# Snapshotters and services that cannot work here; skipping them keeps the log readable.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{self.socket}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{self.path('containerd', 'opt')}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # This VM refuses negative oom_score_adj (no CAP_SYS_RESOURCE): without this every
  # sandbox fails with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # crun fails on this machine's hybrid cgroups; Debian's runc works.
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
  # The node's own registry speaks plain HTTP, and only inside the node's network.
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{REGISTRY}"]
    endpoint = ["http://{REGISTRY}"]
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{self.path('cni')}"
""")
        with open(self.path("cni", "10-stalk.conflist"), "w") as f:
            json.dump({"cniVersion": "1.0.0", "name": "stalk", "plugins": [
                {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True,
                 "hairpinMode": True,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR}]],
                          "routes": [{"dst": "0.0.0.0/0"}], "dataDir": self.path("cni-ipam")}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ]}, f, indent=2)
        # Pods get cluster DNS only: no search domains or name servers of the machine's.
        with open(self.path("resolv.conf"), "w") as f:
            f.write(f"nameserver {DNS_IP}\n")
        with open(self.path("kubelet", "config.json"), "w") as f:
            json.dump({
                "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
                # Only cgroup v1 controllers are usable here (the v2 hierarchy has none).
                "failCgroupV1": False, "cgroupDriver": "cgroupfs",
                "failSwapOn": False,
                "address": NODE_IP, "port": 10250, "readOnlyPort": 0,
                "healthzBindAddress": "127.0.0.1", "healthzPort": ports["kubelet-healthz"],
                "tlsCertFile": f"{pki}/kubelet-serving.crt",
                "tlsPrivateKeyFile": f"{pki}/kubelet-serving.key",
                "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                                   "x509": {"clientCAFile": f"{pki}/ca.crt"}},
                "authorization": {"mode": "Webhook"},
                "clusterDNS": [DNS_IP], "clusterDomain": CLUSTER_DOMAIN,
                "resolvConf": self.path("resolv.conf"),
                "containerRuntimeEndpoint": f"unix://{self.socket}",
                "podLogsDir": self.path("pod-logs"),
                # A shared test disk is often fuller than a real node's; only a nearly full
                # disk should evict.
                "evictionHard": {"memory.available": "200Mi", "nodefs.available": "2%",
                                 "nodefs.inodesFree": "2%", "imagefs.available": "2%"},
                # Images cannot be pulled again: never garbage-collect them.
                "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
                "serializeImagePulls": False, "rotateCertificates": False,
                "registerNode": True, "maxPods": 60,
                "shutdownGracePeriod": "0s",
            }, f, indent=2)
        with open(self.path("kube-proxy.json"), "w") as f:
            json.dump({
                "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
                "clientConnection": {"kubeconfig": os.path.join(self.state_root, "kube-proxy.kubeconfig")},
                "mode": "iptables", "clusterCIDR": POD_CIDR, "hostnameOverride": NODE_NAME,
                "bindAddress": NODE_IP, "healthzBindAddress": f"127.0.0.1:{ports['kube-proxy-healthz']}",
                "metricsBindAddress": f"127.0.0.1:{ports['kube-proxy-metrics']}",
                # Leave the machine-wide conntrack sysctls alone.
                "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s",
                              "tcpCloseWaitTimeout": "0s"},
                # Node ports on 127.0.0.1 need route_localnet; nothing here uses them.
                "iptables": {"localhostNodePorts": False},
            }, f, indent=2)
        with open(self.path("Corefile"), "w") as f:
            f.write(f""".:53 {{
    bind {DNS_IP}
    errors
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {os.path.join(self.state_root, 'coredns.kubeconfig')} stalk-test
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    # No forward: the node reaches no name server outside the cluster, by design.
    cache 5
}}
""")

    def component_args(self):
        kubeconfig = os.path.join(self.state_root, "kubelet.kubeconfig")
        return {
            "containerd": ["/usr/bin/containerd", "--config", self.path("containerd.toml"),
                           "--log-level", "warn"],
            "kubelet": [f"{self.bin_dir}/kubelet", f"--config={self.path('kubelet', 'config.json')}",
                        f"--kubeconfig={kubeconfig}", f"--root-dir={self.path('kubelet')}",
                        f"--cert-dir={self.path('kubelet', 'pki')}",
                        f"--node-ip={NODE_IP}", f"--hostname-override={NODE_NAME}",
                        "--node-labels=stalk.dev/node=real", "--v=1"],
            "kube-proxy": [f"{self.bin_dir}/kube-proxy", f"--config={self.path('kube-proxy.json')}", "--v=1"],
            "coredns": [f"{self.bin_dir}/coredns", "-conf", self.path("Corefile")],
            # Arguments after its flags are ignored: the state dir there lets `down` and `status`
            # know the process as ours.
            "registry": [f"{self.bin_dir}/registry", f"-address={REGISTRY}", self.root],
        }

    # -- namespaces --

    def _start_holder(self):
        """A process in a new mount + network namespace with private /run, /var/lib, /var/log."""
        script = ("set -e; mount --make-rprivate /; "
                  "for d in /run /var/lib /var/log; do mount -t tmpfs -o mode=0755 stalk-node \"$d\"; done; "
                  "mkdir -p /run/netns /run/containerd; ip link set lo up; "
                  "echo 1 > /proc/sys/net/ipv4/ip_forward; "
                  # Pod-to-Service traffic that comes back over the bridge must pass iptables.
                  "echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || true; "
                  f"exec {self.bin_dir}/pause {self.root}")
        out = open(os.path.join(self.logs, "node-namespaces.log"), "ab")
        proc = subprocess.Popen(["unshare", "--mount", "--net", "--propagation", "private", "--",
                                 "sh", "-c", script], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        return proc

    def _link(self, holder_pid):
        # The routes through the link are more specific; without them (the link gone, a typo)
        # the test range ends here instead of leaving by the machine's default route.
        run("ip", "route", "add", "blackhole", TEST_RANGE, check=False)
        run("ip", "link", "add", HOST_LINK, "type", "veth", "peer", "name", "eth0",
            "netns", str(holder_pid))
        run("ip", "addr", "add", f"{HOST_IP}/{LINK_PREFIX}", "dev", HOST_LINK)
        run("ip", "link", "set", HOST_LINK, "up")
        # The machine reaches pods through the node (tests, port-forward's kubelet, debugging).
        run("ip", "route", "add", POD_CIDR, "via", NODE_IP, "dev", HOST_LINK, check=False)
        self.nsenter(holder_pid, "ip", "addr", "add", f"{NODE_IP}/{LINK_PREFIX}", "dev", "eth0")
        self.nsenter(holder_pid, "ip", "link", "set", "eth0", "up")

    def nsenter(self, holder_pid, *argv, check=True):
        return run("nsenter", f"--target={holder_pid}", "--mount", "--net", "--", *argv, check=check)

    def namespaces_of(self, pid):
        try:
            return (os.readlink(f"/proc/{pid}/ns/mnt"), os.readlink(f"/proc/{pid}/ns/net"))
        except OSError:
            return None

    # -- lifecycle --

    def prepare(self, server, ports):
        """Before the API server starts: namespaces and the link it will listen on."""
        if os.path.exists(f"/sys/class/net/{HOST_LINK}"):
            raise NodeError(f"another real node runs on this machine (network link {HOST_LINK} exists); "
                            "stop it with `make cluster-down` in its folder first")
        missing = missing_packages()
        if missing:
            raise NodeError(f"the real node needs Debian packages: {' '.join(missing)} "
                            "(hack/system-deps.sh --node installs them)")
        os.makedirs(self.root, exist_ok=True)
        before = snapshot()
        self.write_configs(server, ports)
        holder = self._start_holder()
        info = {"holder": holder.pid, "pids": {}, "before": before}
        self.save(info)
        deadline = time.monotonic() + 10
        while True:
            ns = self.namespaces_of(holder.pid)
            if ns and ns != self.namespaces_of(os.getpid()) and self._holder_ready(holder.pid):
                break
            if holder.poll() is not None or time.monotonic() > deadline:
                raise NodeError(f"could not create the node's namespaces: "
                                f"{open(os.path.join(self.logs, 'node-namespaces.log')).read()[-500:]}")
            time.sleep(0.05)
        info["namespaces"] = list(ns)
        self.save(info)
        self._link(holder.pid)
        single_file_image(self.path("pause.oci.tar"), os.path.join(self.bin_dir, "pause"), PAUSE_IMAGE, "/pause")
        return info

    def _holder_ready(self, pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read().split(b"\0")[0].endswith(b"/pause")
        except OSError:
            return False

    def start(self, start_process):
        """Start containerd, kubelet, kube-proxy and CoreDNS in the node's namespaces.

        ``start_process(name, argv)`` starts one (hack/cluster.py's starter: log file, own
        session, pid recorded) and returns its Popen.
        """
        info = self.load()
        args = self.component_args()
        procs = {}
        for name in COMPONENTS:
            procs[name] = start_process(name, ["nsenter", f"--target={info['holder']}", "--mount", "--net",
                                               "--", *args[name]])
            info["pids"][name] = procs[name].pid
            self.save(info)
            if name == "containerd":
                self._wait_socket(procs[name])
                self.import_image(self.path("pause.oci.tar"))
        return procs

    def _wait_socket(self, proc, timeout=30):
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.socket):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise NodeError(f"containerd did not start; see {self.logs}/containerd.log")
            time.sleep(0.05)
        deadline = time.monotonic() + timeout
        while self.ctr("version", check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise NodeError(f"containerd does not answer on {self.socket}")
            time.sleep(0.1)

    def ctr(self, *args, check=True):
        return run("ctr", f"--address={self.socket}", "--namespace=k8s.io", *args, check=check)

    def import_image(self, archive):
        """Load an image archive (OCI or docker) into the node's containerd, unpacked for pods."""
        self.ctr("images", "import", "--snapshotter=overlayfs", archive)

    def images(self):
        return sorted(line.split()[0] for line in self.ctr("images", "list", "--quiet").stdout.splitlines()
                      if line and not line.startswith("sha256:"))

    def stop(self, say, grace=10.0, before_unplug=lambda: None):
        """Stop every node process and container, call ``before_unplug``, then remove the node's
        namespaces and link and undo what the kubelet changed.

        ``before_unplug`` stops what still uses the link (the control plane: its API server listens
        on HOST_IP); once the link is gone, a connection to that address would take the
        default route off this machine.
        Returns the ways the machine still differs from before ``prepare`` (empty: as it was).
        """
        info = self.load()
        if not info:
            return []
        pids = info.get("pids", {})
        for name in reversed(COMPONENTS):
            pid = pids.get(name)
            if pid and _is_ours(pid, self.root):
                _terminate(pid, grace, say, name)
        namespaces = tuple(info.get("namespaces") or ())
        before = info.get("before") or {}
        new_cgroups = [os.path.join(h, e) for h, entries in (before.get("cgroups") or {}).items()
                       for e in set(_subdirs(h)) - set(entries)]
        # Containers and their shims outlive containerd. Containers first, in every cgroup
        # made since the node started (kubepods…), so that their shims still reap them; then
        # whatever else runs in the node's namespaces (the shims); then the holder.
        _kill_until_gone(lambda: {p for cg in new_cgroups for p in _cgroup_pids(cg)})
        _kill_until_gone(lambda: {p for p in _all_pids()
                                  if namespaces and self._in_namespaces(p, namespaces)} - {os.getpid()})
        before_unplug()
        holder = info.get("holder")
        if holder and _is_ours(holder, self.root):
            _terminate(holder, 2.0, say, "node namespaces")
        run("ip", "link", "del", HOST_LINK, check=False)
        if not any(r.startswith(f"blackhole {TEST_RANGE}") for r in before.get("routes", [])):
            run("ip", "route", "del", "blackhole", TEST_RANGE, check=False)
        for name, value in (before.get("sysctls") or {}).items():
            try:
                with open(f"/proc/sys/{name}", "w") as f:
                    f.write(value)
            except OSError as e:
                say(f"could not restore {name}={value}: {e}")
        for cg in new_cgroups:
            _remove_cgroup(cg, say)
        return differences(before, snapshot()) if before else []

    def _in_namespaces(self, pid, namespaces):
        ns = self.namespaces_of(pid)
        return bool(ns) and (ns[0] == namespaces[0] or ns[1] == namespaces[1])


def _kill_until_gone(find, timeout=5.0):
    deadline = time.monotonic() + timeout
    while (left := find()) and time.monotonic() < deadline:
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.1)


def _all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cgroup_pids(path):
    """Every process in a cgroup v1 directory and below it."""
    pids = set()
    for dirpath, _, _ in os.walk(path):
        try:
            with open(os.path.join(dirpath, "cgroup.procs")) as f:
                pids |= {int(line) for line in f if line.strip()}
        except OSError:
            pass
    return pids


def _is_ours(pid, marker):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return marker.encode() in f.read()
    except OSError:
        return False


def _terminate(pid, grace, say, name):
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except OSError:
            return
        time.sleep(0.05)
    say(f"{name} (pid {pid}) ignored SIGTERM for {grace:.0f}s; killing it")
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _subdirs(path):
    try:
        return [e for e in os.listdir(path) if os.path.isdir(os.path.join(path, e))]
    except OSError:
        return []


def _remove_cgroup(path, say):
    """rmdir a cgroup and its children, deepest first (cgroupfs refuses non-empty ones)."""
    for dirpath, dirnames, _ in sorted(os.walk(path), key=lambda w: -w[0].count("/")):
        for attempt in range(50):
            try:
                os.rmdir(dirpath)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if attempt == 49:
                    say(f"could not remove cgroup {dirpath}: {e}")
                time.sleep(0.1)
