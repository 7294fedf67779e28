"""A real one-node SLURM cluster for the slow tier: slurmctld and slurmd from the distribution's
packages, run as this process's children from a temporary folder (../shared/slurm-notes.md has the
recipe and what was measured). Needs root: slurmd starts job steps as their owner."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "scontrol", "squeue", "scancel", "sinfo")
INSTALL = (
    "apt-get install --no-install-recommends slurmctld slurmd slurm-client "
    "(Debian/Ubuntu; or your distribution's Slurm packages), and run as root"
)
PARTITION = "test"


def missing() -> str | None:
    """Why this machine cannot run the cluster, or None."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    absent = [name for name in DAEMONS + CLIENTS if shutil.which(name, path=path) is None]
    if absent:
        return f"no {', '.join(absent)}: {INSTALL}"
    if os.geteuid() != 0:
        return "the test cluster's slurmd must run as root (it starts job steps as their owner)"
    return None


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:  # all bound at once: n different ports
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def parse_job(line: str) -> dict[str, str]:
    """``scontrol show job -o``'s one line as a dict (values may hold spaces: a key starts each field)."""
    return dict(re.findall(r"(?:^|\s)([A-Za-z][\w/:]*)=(.*?)(?=\s[A-Za-z][\w/:]*=|$)", line.strip()))


class SlurmCluster:
    """One node (this machine's cores, 127.0.0.1), one partition, no accounting, no munge
    (auth/none), and fast scheduling so that a requeued job runs again within seconds."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.node = socket.gethostname().split(".")[0]
        self.daemons: list[subprocess.Popen] = []
        self.submitted: list[str] = []  # job ids, in order
        # The test process may itself run inside a SLURM job: its SLURM_* variables would leak into
        # the clients (SLURM_JOB_ID makes sbatch/srun join that job) and into the jobs. And earlier
        # in-process DDP tests leave torch.distributed's and Lightning's variables in os.environ: a
        # MASTER_PORT there would give every job the same rendezvous port.
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "PL_", "TORCHELASTIC_"))}
        for name in ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"):
            clean.pop(name, None)
        self.env = {
            **clean,
            "SLURM_CONF": str(self.conf),  # every client needs it, or it looks for the controller in DNS
            "PATH": os.pathsep.join([clean.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"]),
        }

    # -- the daemons ------------------------------------------------------------------------------

    def start(self, timeout: float = 30) -> None:
        # mkdtemp's 0700 would keep jobs of users other than root out, and munged (if used) refuses it.
        self.root.chmod(0o755)
        ctld_port, slurmd_port = free_ports(2)
        for folder in ("state", "spool", "log"):
            (self.root / folder).mkdir(exist_ok=True)
        settings = {
            "ClusterName": "lightsumtest",
            "SlurmctldHost": f"{self.node}(127.0.0.1)",
            "SlurmctldPort": ctld_port,
            "SlurmdPort": slurmd_port,
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "StateSaveLocation": self.root / "state",
            "SlurmdSpoolDir": self.root / "spool",
            "SlurmctldPidFile": self.root / "slurmctld.pid",
            "SlurmdPidFile": self.root / "slurmd.pid",
            "SlurmctldLogFile": self.root / "log" / "slurmctld.log",
            "SlurmdLogFile": self.root / "log" / "slurmd.log",
            "AuthType": "auth/none",
            "CredType": "cred/none",
            # Credentials of a requeued job's first run expire after 5 s instead of 120 s: only then
            # can the same job id start on the node again.
            "AuthInfo": "cred_expire=5",
            "SchedulerParameters": "sched_interval=1,bf_interval=1",
            # Without cgroup delegation (containers): track processes by parentage.
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",
            "JobCompType": "jobcomp/none",
            "MpiDefault": "none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core",
            "ReturnToService": 2,
            "MailProg": "/bin/true",
            "KillWait": 5,  # SIGTERM to SIGKILL on scancel or a time limit
            "MinJobAge": 3600,  # finished jobs stay in `scontrol show job` (no sacct without accounting)
        }
        lines = [f"{key}={value}" for key, value in settings.items()]
        lines += [
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        for command in (["slurmctld", "-D", "-i"], ["slurmd", "-D"]):
            self.daemons.append(
                subprocess.Popen(
                    command,
                    env=self.env,
                    cwd=self.root,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + timeout
        while self.client("sinfo", "-h", "-o", "%t", check=False).stdout.strip() != "idle":
            for daemon in self.daemons:
                if daemon.poll() is not None:
                    raise RuntimeError(f"{daemon.args[0]} exited ({daemon.returncode}):\n{self.logs()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the node never became idle:\n{self.logs()}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Cancel every job and wait for the queue to empty, stop the daemons, then kill what
        outlived them: slurmstepd calls setsid, so a job's processes are no children of ours."""
        if all(daemon.poll() is None for daemon in self.daemons):
            self.client("scancel", f"--partition={PARTITION}", check=False)
            deadline = time.monotonic() + 30
            while self.client("squeue", "-h", check=False).stdout.strip() and time.monotonic() < deadline:
                time.sleep(0.2)
        for daemon in reversed(self.daemons):  # slurmd first: slurmctld would mark the node down
            if daemon.poll() is None:
                daemon.terminate()
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        for pid in self.leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def leftovers(self) -> list[int]:
        """Processes of this cluster's jobs still alive: slurmstepd, or anything with a SLURM_JOB_ID,
        whose environment holds this cluster's SLURM_CONF."""
        mine = f"SLURM_CONF={self.conf}".encode()
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                environ = (proc / "environ").read_bytes().split(b"\0")
                name = (proc / "comm").read_text().strip()
            except OSError:  # gone meanwhile, or not ours to read
                continue
            if mine in environ and (name == "slurmstepd" or any(v.startswith(b"SLURM_JOB_ID=") for v in environ)):
                found.append(int(proc.name))
        return found

    def logs(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in sorted(self.root.glob("log/*.log"))
        )

    # -- clients --------------------------------------------------------------------------------------

    def client(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        result = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def sbatch(self, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
        """Submit (``sbatch --parsable ARGS``); the job id. ``env`` adds variables the job inherits."""
        result = subprocess.run(
            ["sbatch", "--parsable", *args],
            env={**self.env, **(env or {})},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        self.submitted.append(result.stdout.strip().split(";")[0])
        return self.submitted[-1]

    def job_info(self, job_id: str) -> dict[str, str]:
        return parse_job(self.client("scontrol", "show", "job", "-o", job_id).stdout)

    def wait(self, job_id: str, states: tuple[str, ...] | str, timeout: float = 120) -> dict[str, str]:
        """Wait until the job's state is one of ``states``; its ``job_info``."""
        states = (states,) if isinstance(states, str) else states
        deadline = time.monotonic() + timeout
        while (info := self.job_info(job_id))["JobState"] not in states:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {info['JobState']}, not {'/'.join(states)}: {info}")
            time.sleep(0.2)
        return info

    def signal(self, job_id: str, name: str) -> None:
        """``scancel --signal=NAME JOB``: to the job's steps (srun's tasks), not the batch shell."""
        self.client("scancel", f"--signal={name}", job_id)

    def cancel(self, job_id: str) -> None:
        self.client("scancel", job_id)


def start_cluster() -> SlurmCluster:
    cluster = SlurmCluster(Path(tempfile.mkdtemp(prefix="slurm-")))
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster
