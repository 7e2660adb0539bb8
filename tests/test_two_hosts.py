"""A real two-host launch on one machine: two network namespaces joined by a veth pair (docs/cluster.md, "Two
hosts on one machine").

Host A is the namespace ``tha<pid>`` with 10.213.7.1/24, host B ``thb<pid>`` with 10.213.7.2/24 (the only
addresses this file ever uses); each has its own loopback and one link, named ``eth0`` as on a cluster node.
A process started with ``ip netns exec <ns>`` sees only its host's network, so ranks on A and B talk over the
veth exactly as over a wire: rendezvous, gloo, Open MPI's out-of-band channel and its TCP transport. The file
system is shared (like a cluster's shared storage), so both hosts read the same data and write one run folder.

Launchers that start remote processes over ssh (``mpirun``, ``deepspeed --launcher openmpi``) get a
remote-launch agent instead of ssh (``--mca plm_rsh_agent``): Open MPI 4.1 calls it as ``AGENT <host> orted
-mca ...`` (one shell command line after the host), and the agent runs that line in the host's namespace.

Each launch must give the same result as the single-host 2-rank run: the same losses (metrics.jsonl, bitwise)
and the same exported weights; the same shard files (sha256). Needs root (``ip netns add``); skipped only when
creating a namespace is not permitted.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from prealign_scale.dist import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TIMING = {"tokens_per_s", "mfu", "data_wait", "step_time"}
ADDR = {"a": "10.213.7.1", "b": "10.213.7.2"}
SUBNET = "10.213.7.0/24"
LINK = "eth0"  # the veth end's name inside each namespace
pytestmark = pytest.mark.slow


def sh(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=60)


def remove_namespace(ns: str) -> None:
    """Stop what still runs in namespace `ns` (only processes this file started there) and delete it."""
    for pid in sh("ip", "netns", "pids", ns).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    sh("ip", "netns", "del", ns)  # also deletes the veth pair


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """Two namespaces joined by a veth pair, each with lo up and its address on `eth0`; a remote-launch agent
    for Open MPI. Torn down (processes killed, namespaces deleted) after the module."""
    if shutil.which("ip") is None:
        pytest.skip("the `ip` command (iproute2) is not installed: cannot create network namespaces")
    pid = os.getpid()
    ns = {"a": f"tha{pid}", "b": f"thb{pid}"}
    probe = sh("ip", "netns", "add", ns["a"])
    if probe.returncode != 0:
        pytest.skip(f"network namespaces are not permitted here (`ip netns add` failed: {probe.stderr.strip()})")
    try:
        steps = [("ip", "netns", "add", ns["b"]),
                 ("ip", "link", "add", f"va{pid}", "type", "veth", "peer", "name", f"vb{pid}")]
        for h in ("a", "b"):
            steps += [("ip", "link", "set", f"v{h}{pid}", "netns", ns[h]),
                      ("ip", "-n", ns[h], "link", "set", f"v{h}{pid}", "name", LINK),
                      ("ip", "-n", ns[h], "addr", "add", f"{ADDR[h]}/24", "dev", LINK),
                      ("ip", "-n", ns[h], "link", "set", LINK, "up"),
                      ("ip", "-n", ns[h], "link", "set", "lo", "up")]
        for cmd in steps:
            r = sh(*cmd)
            assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr}"
        agent = tmp_path_factory.mktemp("agent") / "netns_agent.sh"
        agent.write_text(
            "#!/bin/sh\n"
            "# Open MPI remote-launch agent: AGENT <host> <command line>; runs the line in the host's namespace.\n"
            "host=$1; shift\n"
            f"echo \"$host $*\" >> {agent.parent / 'calls.log'}\n"
            f"case $host in {ADDR['a']}) ns={ns['a']};; {ADDR['b']}) ns={ns['b']};;\n"
            "  *) echo \"netns_agent: unknown host $host\" >&2; exit 1;; esac\n"
            "exec ip netns exec \"$ns\" sh -c \"$*\"\n")
        agent.chmod(0o755)
        yield {"ns": ns, "agent": agent, "calls": agent.parent / "calls.log"}
    finally:
        for n in ns.values():
            remove_namespace(n)


# ------------------------------------------------------------------------------------------------ helpers
def cpu_env(**extra: str) -> dict:
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONUNBUFFERED="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "GLOO_SOCKET_IFNAME"):
        env.pop(k, None)
    env.update(extra)
    return env


def run_args(data: dict, out_dir: Path) -> list[str]:
    """launchers/pretrain.py arguments: the tiny preset, 2 align steps then 3 LM steps, HF export."""
    return ["launchers/pretrain.py", "--config", "configs/tiny.yaml", f"data.shard_dir={data['shards']}",
            f"data.table_dir={data['table']}", f"data.tokenizer_dir={data['tokenizer']}", "align.steps=2",
            "align.entries_per_rank=8", "lm.steps=3", "lm.micro_batch_size=2", "run.progress=false",
            "dist.timeout_minutes=3", f"run.out_dir={out_dir}"]


def check(proc: subprocess.CompletedProcess | tuple, what: str) -> str:
    code, out = (proc.returncode, proc.stdout + proc.stderr) if hasattr(proc, "returncode") else proc
    assert code == 0, f"{what} -> exit {code}\n{out[-6000:]}"
    return out


def in_ns(ns: str, cmd: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *cmd]


def metrics(run_dir: Path) -> list[dict]:
    import json

    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def weights(run_dir: Path) -> dict:
    """The exported HF weights of a run: tensor name -> tensor."""
    from safetensors.torch import load_file

    files = sorted((run_dir / "hf").glob("*.safetensors"))
    assert files, f"no exported weights in {run_dir / 'hf'}"
    return {k: v for f in files for k, v in load_file(f).items()}


def assert_same_run(got: Path, want: Path) -> None:
    import torch

    assert [(m["phase"], m["step"]) for m in metrics(got)] == \
        [("align", 1), ("align", 2), ("lm", 1), ("lm", 2), ("lm", 3)]
    assert metrics(got) == metrics(want)  # bitwise: same losses, learning rates, token counts
    wg, ww = weights(got), weights(want)
    assert wg.keys() == ww.keys()
    assert all(torch.equal(wg[k], ww[k]) for k in wg), [k for k in wg if not torch.equal(wg[k], ww[k])]
    assert (got / "DONE").is_file() and (got / "checkpoints/latest").read_text() == "lm-step00000003"


def file_hashes(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def remote_launches(hosts: dict) -> list[str]:
    """The hosts the agent was asked to start something on so far (one line per call)."""
    calls = hosts["calls"]
    return [x.split()[0] for x in calls.read_text().splitlines()] if calls.exists() else []


def mpirun_two_hosts(agent: Path) -> list[str]:
    """mpirun options for one rank on each namespace host, remote ranks started by the agent, MPI traffic
    (out-of-band and TCP transport) on the veth subnet."""
    return ["--allow-run-as-root", "-H", f"{ADDR['a']}:1,{ADDR['b']}:1", "--mca", "plm_rsh_agent", str(agent),
            "--mca", "oob_tcp_if_include", SUBNET, "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include",
            SUBNET]


@pytest.fixture(scope="module")
def single_host_run(tiny_data, tmp_path_factory) -> Path:
    """The reference: the same run by `torchrun --nproc_per_node 2` on this host's loopback."""
    out = tmp_path_factory.mktemp("single_host") / "run"
    check(subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                          "--master_port", str(free_port()), *run_args(tiny_data, out)], cwd=ROOT,
                         env=cpu_env(GLOO_SOCKET_IFNAME="lo"), capture_output=True, text=True, timeout=300,
                         check=False), "single-host torchrun")
    return out


# ------------------------------------------------------------------------------------------------- tests
def test_torchrun_two_nodes_c10d_rendezvous(hosts, tiny_data, single_host_run, tmp_path):
    """One `torchrun --nnodes 2 --nproc_per_node 1` per host, c10d rendezvous at host A's address."""
    out, port = tmp_path / "run", 29611  # the namespaces are fresh: any port is free there
    procs = {}
    try:
        for h in ("a", "b"):
            cmd = [str(BIN / "torchrun"), "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                   "--rdzv_endpoint", f"{ADDR['a']}:{port}", "--rdzv_id", "two-hosts", "--local_addr", ADDR[h],
                   # the store runs on A: torchrun would look for the endpoint among the machine's own addresses
                   # (its host name's), not the namespace's, and then both would wait for a store
                   "--rdzv_conf", f"is_host={int(h == 'a')}",
                   *run_args(tiny_data, out)]
            procs[h] = subprocess.Popen(in_ns(hosts["ns"][h], cmd), cwd=ROOT, env=cpu_env(GLOO_SOCKET_IFNAME=LINK),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        logs = {h: p.communicate(timeout=300)[0] for h, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for h, p in procs.items():
        check((p.returncode, logs[h]), f"torchrun on host {h}")
    assert f"run finished: {out}" in logs["a"] + logs["b"]
    assert_same_run(out, single_host_run)


def test_shard_builder_mpirun_across_hosts(hosts, tiny_data, tmp_path):
    """`mpirun -np 2`, one rank per host: the same shards and manifest as `mpirun -np 2` on one host."""
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun is not installed (apt-get install -y openmpi-bin libopenmpi-dev; scripts/install.sh)")
    data = Path(tiny_data["tokenizer"]).parent

    def build(out: Path) -> list[str]:
        return [sys.executable, str(ROOT / "data_tools/build_shards.py"), "--out", str(out), "--no-progress",
                "--tokenizer", str(tiny_data["tokenizer"]), "--table", str(tiny_data["table"]),
                "--corpus", f"en={data / 'clone/en.jsonl.gz'}", "--corpus", f"clone={data / 'clone/clone.jsonl.gz'}",
                "--clone-langs", "clone", "--mixture", "en=0.8,clone=0.2", "--seq-len", "64",
                "--samples-per-shard", "8", "--shard-multiple", "4", "--docs-per-chunk", "16"]

    one, two = tmp_path / "one_host", tmp_path / "two_hosts"
    before = len(remote_launches(hosts))
    check(subprocess.run(["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2", "--mca", "btl",
                          "self,vader", "--mca", "oob_tcp_if_include", "lo", *build(one)], cwd=ROOT,
                         env=cpu_env(), capture_output=True, text=True, timeout=300, check=False),
          "single-host mpirun")
    check(subprocess.run(in_ns(hosts["ns"]["a"], ["mpirun", *mpirun_two_hosts(hosts["agent"]), "-np", "2",
                                                  *build(two)]),
                         cwd=ROOT, env=cpu_env(), capture_output=True, text=True, timeout=300, check=False),
          "two-host mpirun")
    assert remote_launches(hosts)[before:] == [ADDR["b"]]  # host B's daemon was started in B's namespace
    want = file_hashes(one)
    assert any(k.startswith("shard-") for k in want) and len(want) >= 5  # 4 shards and the manifest at least
    assert file_hashes(two) == want
    # both ranks built chunks (round-robin over ranks), so both hosts did work
    assert len(list((two / ".work/chunks").iterdir())) >= 2


def test_deepspeed_launcher_openmpi_hostfile(hosts, tiny_data, single_host_run, tmp_path):
    """`deepspeed --hostfile H --launcher openmpi` on host A: DeepSpeed's runner builds an `mpirun` over both
    hosts (its default `--mca btl_tcp_if_include eth0` is the veth here); ranks find themselves from OMPI_*."""
    if shutil.which("mpirun") is None:
        pytest.skip("mpirun is not installed (apt-get install -y openmpi-bin libopenmpi-dev; scripts/install.sh)")
    hostfile, out = tmp_path / "hostfile", tmp_path / "run"
    hostfile.write_text(f"{ADDR['a']} slots=1\n{ADDR['b']} slots=1\n")
    # The runner's ssh check and its ssh `hostname -I` probe are skipped (--no_ssh_check, --master_addr); the
    # openmpi runner does not pass MASTER_ADDR on to the ranks, so mpirun exports it (-x), with gloo's link.
    launcher_args = ["--allow-run-as-root", "--mca", "plm_rsh_agent", str(hosts["agent"]), "--mca",
                     "oob_tcp_if_include", SUBNET, "-x", f"MASTER_ADDR={ADDR['a']}", "-x", f"GLOO_SOCKET_IFNAME={LINK}"]
    cmd = [str(BIN / "deepspeed"), "--hostfile", str(hostfile), "--launcher", "openmpi", "--no_ssh_check",
           "--master_addr", ADDR["a"], "--launcher_args", " ".join(launcher_args), *run_args(tiny_data, out)]
    before = len(remote_launches(hosts))
    log = check(subprocess.run(in_ns(hosts["ns"]["a"], cmd), cwd=ROOT, env=cpu_env(), capture_output=True,
                               text=True, timeout=300, check=False), "deepspeed --launcher openmpi")
    assert "mpirun -n 2 -hostfile" in log and f"run finished: {out}" in log
    assert remote_launches(hosts)[before:] == [ADDR["b"]]
    assert_same_run(out, single_host_run)
