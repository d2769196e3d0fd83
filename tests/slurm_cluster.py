"""A real one-node Slurm cluster for the tests: munged, slurmctld and slurmd on 127.0.0.1.

Everything lives in one temporary directory (munge key and socket, slurm.conf, state, spool,
logs), the daemons talk on ports of their own, and `stop()` ends exactly the processes
`start()` started. Debian's `slurm-wlm` and `munge` packages provide the programs (`make test`
installs them); without them the cluster fails to start, loudly.

Everything talks over 127.0.0.1: the controller's and the node's addresses are 127.0.0.1, and
the node is named `localhost`, so that the trainers of a job, which address each other by their
node's name as on a real cluster, do so over it too. Slurm has no setting for the address its
daemons (and srun) listen on, and they listen on every interface; they cannot run in a
loopback-only network namespace as launch.local's workers do, since Slurm resolves its own
listening address with getaddrinfo(AI_ADDRCONFIG), which finds none where only loopback is up.
"""

import contextlib
import os
import pathlib
import shutil
import subprocess
import time

from launch.ports import free_ports
from trainer.common import child_processes

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo", "squeue", "scancel")
NODE = "localhost"

_CONF = """\
ClusterName=mlptest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire: a requeued job waits this long before it starts again (default 120 s).
AuthInfo=socket={munge_socket},cred_expire=5
CredType=cred/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups in a container: processes are tracked by their parent, tasks are not pinned.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
# Fast turnaround: a test waits for scheduling and for the requeued job.
SchedulerParameters=sched_interval=1
MinJobAge=600
KillWait=5
NodeName={node} NodeAddr=127.0.0.1 NodeHostname={node} CPUs={cpus} State=UNKNOWN
PartitionName=test Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""


class SlurmCluster:
    """munged, slurmctld and slurmd under `directory`; `env` is what a Slurm client needs."""

    def __init__(self, directory):
        self.dir = pathlib.Path(directory)
        self.conf = self.dir / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self._processes = []

    def start(self, timeout: float = 60) -> "SlurmCluster":
        """Starts the daemons and waits for an idle node; stops what it started if that fails."""
        try:
            return self._start_daemons(timeout)
        except BaseException:
            self.stop()
            raise

    def _start_daemons(self, timeout: float) -> "SlurmCluster":
        missing = [p for p in PROGRAMS if shutil.which(p) is None]
        if missing:
            raise RuntimeError(
                f"Slurm is not installed (no {', '.join(missing)}): "
                "apt-get install slurm-wlm munge, as `make test` does"
            )
        for sub in ("munge", "state", "spool"):
            (self.dir / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        key = self.dir / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        socket = self.dir / "munge" / "munge.socket"
        self._start(
            "munged",
            "--foreground",
            "--force",
            f"--socket={socket}",
            f"--key-file={key}",
            f"--pid-file={self.dir / 'munge' / 'munged.pid'}",
            f"--log-file={self.dir / 'munge' / 'munged.log'}",
            f"--seed-file={self.dir / 'munge' / 'munged.seed'}",
        )
        _wait_for(socket.exists, timeout, "munged's socket", self.dir / "munge" / "munged.log")
        ctld_port, slurmd_port = free_ports(2)
        self.conf.write_text(
            _CONF.format(
                node=NODE,
                ctld_port=ctld_port,
                slurmd_port=slurmd_port,
                munge_socket=socket,
                dir=self.dir,
                cpus=os.cpu_count(),
            )
        )
        # -D: in the foreground, so these are the processes to stop; -i/-c: a fresh state.
        self._start("slurmctld", "-D", "-c", "-i", "-f", self.conf)
        self._start("slurmd", "-D", "-N", NODE, "-f", self.conf)
        _wait_for(self._node_is_idle, timeout, "an idle node", self.dir / "slurmctld.log")
        return self

    def run(self, *args, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster."""
        return subprocess.run(
            list(map(str, args)),
            env=self.env,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
        )

    def job(self, job_id: str) -> dict[str, str]:
        """scontrol's fields of a job: JobState, ExitCode, Restarts, ..."""
        out = self.run("scontrol", "show", "job", "--oneliner", job_id).stdout
        return dict(field.split("=", 1) for field in out.split() if "=" in field)

    def wait_for_job(self, job_id: str, states, timeout: float) -> dict[str, str]:
        """Polls until the job is in one of `states`; its fields."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["JobState"] in states:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {job_id} still {job['JobState']} after {timeout} s, not {states}: {job}"
                )
            time.sleep(0.5)

    def stop(self) -> None:
        """Cancels the jobs left (a slurmd that stops leaves its jobs running), then stops what
        start() started, newest first: slurmd, slurmctld, munged."""
        if len(self._processes) == 3 and all(p.poll() is None for p in self._processes):
            try:
                self._cancel_jobs()
            except (subprocess.SubprocessError, TimeoutError) as e:
                print(f"slurm_cluster: jobs left running: {e}")
        for process in reversed(self._processes):  # One by one: each may need the next.
            child_processes.stop([process], time.monotonic() + 30)
        self._processes.clear()

    def _start(self, program: str, *args) -> None:
        log = open(self.dir / f"{program}.out", "w")
        self._processes.append(
            subprocess.Popen(
                [program, *map(str, args)], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        )
        log.close()

    def _jobs(self) -> list[str]:
        return self.run("squeue", "--noheader", "--format=%i", timeout=10).stdout.split()

    def _cancel_jobs(self) -> None:
        jobs = self._jobs()
        if jobs:
            self.run("scancel", *jobs)
            _wait_for(lambda: not self._jobs(), 60, "end of the jobs", self.dir / "slurmd.log")

    def _node_is_idle(self) -> bool:
        for process in self._processes:
            if process.poll() is not None:
                raise RuntimeError(
                    f"{process.args[0]} exited with {process.returncode}: see {self.dir}"
                )
        state = self.run("sinfo", "--noheader", "--format=%T", check=False, timeout=10)
        return state.stdout.strip() == "idle"


def _wait_for(ready, timeout: float, what: str, log) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout} s; see {log}")
        time.sleep(0.2)


@contextlib.contextmanager
def running(directory, env: dict[str, str]):
    """A cluster started under `directory`, whose jobs' processes inherit `env` (sbatch
    --export=ALL) with its SLURM_CONF; stopped after."""
    cluster = SlurmCluster(directory).start()
    cluster.env.update(env, SLURM_CONF=str(cluster.conf))
    try:
        yield cluster
    finally:
        cluster.stop()
