"""Hosts on one machine, for the multi-host test and benchmark: each "host" a network namespace of its own, joined to
the machine's namespace by a veth pair on a private bridge, so the Prefect server, PostgreSQL and each host's node
server talk over a real (virtual) network, each bound to its own address, as on a LAN of GPU hosts.

Namespaces need root and ``ip`` (iproute2). Where they cannot be made, the hosts fall back to plain processes on
127.0.0.1 (``mode == "processes"``, ``why`` says what failed): the test still runs, and says which mode it ran in.
Everything made is removed on :meth:`Hosts.close`, also when what ran inside failed; a run killed before it could
clean up leaves names starting with ``atn`` behind (``ip netns list``), which the next :meth:`Hosts.open` of the same
process id would replace.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field

LOOPBACK = "127.0.0.1"


class NetnsUnavailable(RuntimeError):
    """Network namespaces could not be created here (not root, no iproute2, no veth/bridge support)."""


@dataclass
class Host:
    name: str
    address: str
    netns: str | None = None

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host's namespace (as is in process mode)."""
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)


@dataclass
class Hosts:
    """``n`` hosts and the address of the machine's side (``server_address``: where the Prefect server, PostgreSQL
    and the ledger's sync listen). ``mode``: ``"netns"`` or ``"processes"``."""

    names: list[str]
    mode: str = "processes"
    why: str = ""
    server_address: str = LOOPBACK
    subnet: str | None = None
    hosts: list[Host] = field(default_factory=list)
    _made: list[list[str]] = field(default_factory=list)

    @classmethod
    def open(cls, names: list[str], *, netns: bool = True) -> "Hosts":
        hosts = cls(list(names))
        if netns:
            try:
                hosts._make_namespaces()
                return hosts
            except NetnsUnavailable as exc:
                hosts.close()
                hosts.why = str(exc)
        hosts.mode = "processes"
        hosts.server_address = LOOPBACK
        hosts.hosts = [Host(n, LOOPBACK) for n in hosts.names]
        return hosts

    def __getitem__(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    def _ip(self, *args: str, undo: list[str] | None = None) -> None:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise NetnsUnavailable(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
        if undo is not None:
            self._made.append(undo)

    def _make_namespaces(self) -> None:
        if os.geteuid() != 0:
            raise NetnsUnavailable("network namespaces need root")
        if shutil.which("ip") is None:
            raise NetnsUnavailable("no `ip` command (iproute2)")
        tag = f"atn{os.getpid() % 100000}"
        net = _free_subnet()
        self.subnet = str(net)
        addresses = [str(a) for a in list(net.hosts())[: len(self.names) + 1]]
        self.server_address = addresses[0]
        bridge = f"{tag}br"
        _forget(tag, len(self.names))
        self._ip("link", "add", bridge, "type", "bridge", undo=["link", "del", bridge])
        self._ip("addr", "add", f"{addresses[0]}/{net.prefixlen}", "dev", bridge)
        self._ip("link", "set", bridge, "up")
        for i, (name, address) in enumerate(zip(self.names, addresses[1:])):
            ns, outside, inside = f"{tag}-{i}", f"{tag}h{i}", f"{tag}n{i}"
            self._ip("netns", "add", ns, undo=["netns", "del", ns])
            self._ip("link", "add", outside, "type", "veth", "peer", "name", inside, undo=["link", "del", outside])
            self._ip("link", "set", inside, "netns", ns)
            self._ip("link", "set", outside, "master", bridge)
            self._ip("link", "set", outside, "up")
            self._ip("-n", ns, "addr", "add", f"{address}/{net.prefixlen}", "dev", inside)
            self._ip("-n", ns, "link", "set", inside, "up")
            self._ip("-n", ns, "link", "set", "lo", "up")
            self.hosts.append(Host(name, address, ns))
        self.mode = "netns"

    def close(self) -> None:
        """Remove every namespace, veth and the bridge made (deleting a namespace also deletes its veth end)."""
        for undo in reversed(self._made):
            subprocess.run(["ip", *undo], capture_output=True)
        self._made.clear()

    def __enter__(self) -> "Hosts":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _forget(tag: str, n: int) -> None:
    """What a killed earlier run of the same process id left (same names): removed before reuse."""
    for i in range(n):
        subprocess.run(["ip", "netns", "del", f"{tag}-{i}"], capture_output=True)
        subprocess.run(["ip", "link", "del", f"{tag}h{i}"], capture_output=True)
    subprocess.run(["ip", "link", "del", f"{tag}br"], capture_output=True)


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 of 10.200.0.0/13 that no interface of this machine uses."""
    proc = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True)
    used = [ipaddress.ip_interface(w).network for line in proc.stdout.splitlines()
            for w in line.split() if "/" in w and w[0].isdigit()]
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{200 + random.randrange(8)}.{random.randrange(256)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise NetnsUnavailable("no free private /24 for the hosts' network")
