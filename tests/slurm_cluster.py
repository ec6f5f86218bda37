"""A real single-node SLURM cluster for the tests: installed when missing, configured and started under a temporary
directory, stopped again.

:func:`start_cluster` installs ``slurm-wlm`` and ``munge`` with apt-get when their commands are missing, writes a
munge key and a ``slurm.conf`` for one node named after this host (its real CPUs and memory, two GPUs that exist
only as placeholder files, so that GPU requests are scheduled on a machine without one), starts ``munged``,
``slurmctld`` and ``slurmd`` in the foreground as child processes, and waits until the node is idle.
:meth:`SlurmCluster.stop` cancels what is left in the queue and ends the three daemons.

Everything lives under the given directory, with one exception: the executor plugin's job step drops
``SLURM_CONF`` from the environment of the ``srun`` it starts inside each job, so that ``srun`` reads the system
path ``/etc/slurm/slurm.conf``. The cluster links that path to its own ``slurm.conf`` while it runs and removes the
link when it stops; a machine that already has a ``/etc/slurm/slurm.conf`` has its own SLURM, and is left alone.
:class:`SlurmUnavailable` says why a cluster cannot be had here (not root, no apt-get, an own SLURM); tests skip
with that reason.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
PARTITION = "main"
GPUS = 2
_SBIN = os.pathsep.join(("/usr/local/sbin", "/usr/sbin", "/sbin"))


class SlurmUnavailable(Exception):
    """A SLURM cluster cannot be started on this machine; the message says why."""


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join((os.environ.get("PATH", ""), _SBIN)))


def _missing() -> list[str]:
    return [name for name in (*DAEMONS, *CLIENTS) if _which(name) is None]


def ensure_installed() -> None:
    """Install SLURM and munge with apt-get if a command of theirs is missing; :class:`SlurmUnavailable` if that
    cannot be done here."""
    missing = _missing()
    if not missing:
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"{', '.join(missing)} missing, and installing {' '.join(PACKAGES)} needs root")
    if _which("apt-get") is None:
        raise SlurmUnavailable(f"{', '.join(missing)} missing, and there is no apt-get to install them with")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", *PACKAGES]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200, check=False)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise SlurmUnavailable(f"'{' '.join(command)}' failed: {last}")
    if missing := _missing():
        raise SlurmUnavailable(f"{', '.join(missing)} still missing after installing {' '.join(PACKAGES)}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def node_hardware() -> str:
    """This machine as ``slurmd -C`` sees it: ``NodeName=... CPUs=... RealMemory=...`` (no uptime)."""
    out = subprocess.run([_which("slurmd") or "slurmd", "-C"], capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("NodeName="))
    return line.strip()


SLURM_CONF = """\
# a single-node test cluster: no accounting, no cgroups, two placeholder GPUs
ClusterName=mtlrepro-test
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
MinJobAge=600
KillWait=5
{hardware} NodeAddr=127.0.0.1 Gres=gpu:{gpus} State=UNKNOWN
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""

# SLURM 22.05 drops a GPU without File= from the node (even with Flags=CountOnly): the GPUs are placeholder files,
# which slurmd counts (it logs that they are no devices; without device cgroups nothing else looks at them)
GRES_CONF = """\
AutoDetect=off
NodeName={node} Name=gpu File={root}/gpu/gpu[0-{last}]
"""


@dataclass
class SlurmCluster:
    """A running single-node cluster: its directory, ``slurm.conf``, node name and daemon processes."""

    root: Path
    conf: Path
    node: str
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)
    linked_conf: bool = False
    made_conf_dir: bool = False

    @property
    def env(self) -> dict[str, str]:
        """The environment for client commands and Snakemake: this cluster's ``SLURM_CONF``."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def command(self, *args: str, check: bool = True) -> str:
        """Run a SLURM client command against this cluster and return its output; raise if it fails (and
        ``check``)."""
        done = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=60, check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld remembers (finished ones for MinJobAge), as ``scontrol show job`` fields."""
        out = self.command("scontrol", "--oneliner", "show", "job")
        return [
            dict(re.findall(r"(?:^|\s)([A-Za-z][\w:/]*)=(\S*)", line))
            for line in out.splitlines()
            if line.startswith("JobId=")
        ]

    def queued(self) -> list[str]:
        """Ids of the jobs pending, running or completing."""
        return self.command("squeue", "--noheader", "--format=%i").split()

    def node_state(self) -> str:
        return self.command("sinfo", "--noheader", "--Node", "--format=%T").strip()

    def wait_until_idle(self, timeout: float) -> None:
        """Wait for the node to be idle; raise with the daemons' logs if it is not within ``timeout`` seconds."""
        deadline, state = time.monotonic() + timeout, "unknown"
        while time.monotonic() < deadline:
            for name, process in self.daemons.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited ({process.returncode}):\n{self.log_tail()}")
            try:
                state = self.node_state()
            except RuntimeError:
                state = "no answer"
            if state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(f"node {self.node} is {state!r}, not idle, after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        parts = []
        for log in sorted((self.root / "log").glob("*")):
            tail = log.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel the jobs still queued, end the daemons, and remove the link to this cluster's ``slurm.conf``."""
        try:
            if self.daemons.get("slurmctld") and self.daemons["slurmctld"].poll() is None:
                if left := self.queued():
                    self.command("scancel", *left, check=False)  # a job may end meanwhile
                deadline = time.monotonic() + 30
                while self.queued() and time.monotonic() < deadline:
                    time.sleep(0.5)
        finally:
            for name in reversed(DAEMONS):  # slurmd, slurmctld, then munged
                process = self.daemons.get(name)
                if process is None or process.poll() is not None:
                    continue
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            if self.linked_conf and SYSTEM_CONF.is_symlink() and SYSTEM_CONF.resolve() == self.conf.resolve():
                SYSTEM_CONF.unlink()
            if self.made_conf_dir:
                SYSTEM_CONF.parent.rmdir()


def _start(cluster: SlurmCluster, name: str, *args: str) -> None:
    log = (cluster.root / "log" / f"{name}.out").open("w")
    cluster.daemons[name] = subprocess.Popen(
        [_which(name) or name, *args], stdout=log, stderr=subprocess.STDOUT, env=cluster.env
    )
    log.close()


def start_cluster(root: Path, timeout: float = 60) -> SlurmCluster:
    """Install (if needed), configure and start a single-node cluster under ``root``; wait until its node is idle.

    Raises :class:`SlurmUnavailable` where no cluster can be had on this machine, :class:`RuntimeError` if one that
    should start does not (with the daemons' logs).
    """
    if os.geteuid() != 0:
        raise SlurmUnavailable("the test cluster runs slurmd and slurmctld as root (SlurmUser=root)")
    ensure_installed()
    if SYSTEM_CONF.exists() or SYSTEM_CONF.is_symlink():
        raise SlurmUnavailable(f"{SYSTEM_CONF} exists: this machine has a SLURM of its own, the test leaves it alone")
    root = root.resolve()
    for sub in ("munge", "state", "spool", "log", "gpu"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(GPUS):
        (root / "gpu" / f"gpu{i}").touch()
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(128))
    key.chmod(0o600)
    hardware = node_hardware()
    node = hardware.split()[0].removeprefix("NodeName=")
    conf = root / "slurm.conf"
    munge_socket = root / "munge" / "munge.socket"
    conf.write_text(
        SLURM_CONF.format(
            node=node,
            root=root,
            hardware=hardware,
            munge_socket=munge_socket,
            ctld_port=_free_port(),
            slurmd_port=_free_port(),
            gpus=GPUS,
            partition=PARTITION,
        )
    )
    (root / "gres.conf").write_text(GRES_CONF.format(node=node, root=root, last=GPUS - 1))

    cluster = SlurmCluster(root=root, conf=conf, node=node)
    try:
        try:
            if not SYSTEM_CONF.parent.exists():
                SYSTEM_CONF.parent.mkdir(parents=True)
                cluster.made_conf_dir = True
            SYSTEM_CONF.symlink_to(conf)
        except OSError as err:
            raise SlurmUnavailable(f"cannot link {SYSTEM_CONF} to the test cluster's slurm.conf: {err}") from None
        cluster.linked_conf = True
        # --force: munged refuses a socket whose parent directories are not open to all (a temporary directory's are
        # not); only root talks to it here
        munge = root / "munge"
        _start(
            cluster,
            "munged",
            "--foreground",
            "--force",
            f"--key-file={key}",
            f"--socket={munge_socket}",
            f"--pid-file={munge / 'munged.pid'}",
            f"--log-file={munge / 'munged.log'}",
            f"--seed-file={munge / 'munged.seed'}",
        )
        deadline = time.monotonic() + timeout
        while not munge_socket.exists():
            if cluster.daemons["munged"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"munged did not start:\n{cluster.log_tail()}")
            time.sleep(0.1)
        _start(cluster, "slurmctld", "-D", "-f", str(conf))
        _start(cluster, "slurmd", "-D", "-f", str(conf))
        cluster.wait_until_idle(timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster
