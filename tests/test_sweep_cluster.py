"""A sweep on a two-node Ray cluster on this machine: `ray start --head` and a second `ray start
--address`, each with its own temporary directory and one CPU. The CLI joins it with --address and
its trials run on both nodes (each trial's attempt log records the node it ran on)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="the sweep tests need the ray extra (pip install 'lmaas-tune[ray]')")
psutil = pytest.importorskip("psutil")

from remote_support import sentiment_task  # noqa: E402

RAY = str(Path(sys.executable).parent / "ray")
# this test's nodes and driver only: no token shared through ~/.ray, and nothing else's cluster
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive_nodes(address: str) -> int:
    code = ("import ray, logging; ray.init(address=%r, logging_level=logging.ERROR); "
            "print(sum(n['Alive'] for n in ray.nodes()))" % address)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    return int(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 and res.stdout.strip() else 0


def _stop(procs: list[subprocess.Popen[str]], temp_dirs: list[str]) -> None:
    """SIGTERM our `ray start --block` processes (each stops its node's processes), then kill any
    process still running out of one of our nodes' temporary directories."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
    time.sleep(1)
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info.get("cmdline") or [])
        if any(d in cmd for d in temp_dirs):
            try:
                proc.kill()
            except psutil.Error:
                pass
    for d in temp_dirs:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[str]:
    port = _free_port()
    address = f"127.0.0.1:{port}"
    temp_dirs = [tempfile.mkdtemp(prefix="rh", dir="/tmp"), tempfile.mkdtemp(prefix="rw", dir="/tmp")]  # short paths: sockets live there
    common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    procs = []
    try:
        procs.append(subprocess.Popen([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false",
                                       f"--temp-dir={temp_dirs[0]}", *common], env=ENV, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, text=True))
        deadline = time.monotonic() + 120
        while not _listening(port):  # the head's GCS is up
            assert time.monotonic() < deadline and procs[0].poll() is None, "the head node did not start"
            time.sleep(0.2)
        procs.append(subprocess.Popen([RAY, "start", f"--address={address}", f"--temp-dir={temp_dirs[1]}", *common],
                                      env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True))
        while _alive_nodes(address) < 2:
            assert time.monotonic() < deadline and procs[1].poll() is None, "the second node did not join"
            time.sleep(1)
        yield address
    finally:
        _stop(procs, temp_dirs)


def test_a_sweep_joins_a_two_node_cluster_and_its_trials_run_on_both_nodes(
        cluster: str, llama_dir: Path, tmp_path: Path) -> None:
    sentiment_task(tmp_path)
    out = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "lmaas_tune", "sweep", "--task", "custom", "--template", "{sentence} . It was {mask}",
           "--label-words", "bad,great", "--train-file", str(tmp_path / "train.tsv"), "--test-file",
           str(tmp_path / "test.tsv"), "--seeds", "42,43", "--model", str(llama_dir), "--device", "cpu",
           "--budget", "24", "--popsize", "4", "--prompt-length", "2", "--intrinsic-dim", "8", "--k-shot", "4",
           "--eval-every", "8", "-o", str(out), "--address", cluster, "--format", "json"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr
    table = json.loads(res.stdout)
    assert [t["status"] for t in table["trials"]] == ["finished", "finished"]
    nodes = {t["node_id"] for t in table["trials"]}
    assert len(nodes) == 2 and None not in nodes, table["trials"]  # one trial on each node (SPREAD, one CPU each)
    for t in table["trials"]:
        starts = [json.loads(line) for line in (out / "attempts" / f"{t['id']}.jsonl").read_text().splitlines()]
        assert starts[0]["node_id"] == t["node_id"] and starts[0]["pid"] == t["pid"]
