"""MultiWorkerMirroredStrategy: two worker processes on loopback give one
device's training; XLA stays off by default under a distribution strategy."""

import json
import os
import socket
import subprocess
import sys
import time

import keras
import pytest
import tensorflow as tf
from model_fixtures import TWO_TASK_LOSSES, two_task_mlp

STRATEGIES = ["ew", "uw", "dwa", "pcgrad", "mgda", "nash_mtl"]
TIMEOUT = 240


def _free_ports(count):
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _run_workers(script, args, num_workers=2, timeout=TIMEOUT):
    """Starts one process per worker with its TF_CONFIG; returns their
    (returncode, stdout, stderr). A worker that fails makes the others stop
    at once (they would wait on its collective ops until the timeout)."""
    ports = _free_ports(num_workers)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = []
    for index in range(num_workers):
        env = dict(os.environ)
        env["TF_CONFIG"] = json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}
        )
        env["TF_CPP_MIN_LOG_LEVEL"] = "3"
        env["CUDA_VISIBLE_DEVICES"] = "-1"
        workers.append(
            subprocess.Popen(
                [sys.executable, script, *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    deadline = time.monotonic() + timeout
    try:
        while any(w.poll() is None for w in workers):
            failed = [w for w in workers if w.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    results = []
    for worker in workers:
        out, err = worker.communicate()
        results.append((worker.returncode, out, err))
    return results


@pytest.mark.slow
@pytest.mark.integration
def test_two_workers_match_one_device():
    script = os.path.join(os.path.dirname(__file__), "multi_worker_check.py")
    results = _run_workers(script, STRATEGIES)
    for index, (code, out, err) in enumerate(results):
        lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
        assert code == 0 and lines, (index, code, err[-3000:])
        report = json.loads(lines[-1][len("RESULT ") :])
        assert report["task_index"] == index
        assert report["num_replicas_in_sync"] == 2
        for name in STRATEGIES:
            entry = report[name]
            assert entry["log_keys_match"], (name, entry)
            assert entry["jit_compile"] is False, entry
            assert entry["max_change"] > 1e-3, (name, entry)
            assert entry["max_state_diff"] < 1e-5, (name, index, entry)
            assert entry["max_log_diff"] < 1e-5, (name, index, entry)
            # Each worker trained on its half of every global batch.
            assert entry["rows_this_worker"] * 2 == entry["rows_one_device"], entry


def _compiled_jit(distribution=None):
    keras.utils.set_random_seed(0)
    scope = (
        distribution.scope() if distribution else tf.distribute.get_strategy().scope()
    )
    with scope:
        model = two_task_mlp()
        model.compile(optimizer="sgd", loss=TWO_TASK_LOSSES, jit_compile="auto")
    return model.jit_compile


def test_auto_jit_compile_is_off_under_a_distribution_strategy(monkeypatch):
    # XLA compiles Keras' whole step, `strategy.run` included, as one cluster
    # on one device: with several local replicas it fails ("Trying to access
    # resource .../replica_1 located in device CPU:1 from device CPU:0"), and
    # across workers on CPU XLA has no collectives. Keras resolves "auto" to
    # False for a model created under a distribution strategy. Keras also
    # turns "auto" off on CPU-only machines, so a GPU is faked here (no step
    # runs) to see the distribution rule itself.
    real = tf.config.list_physical_devices
    fake_gpu = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")

    def with_gpu(device_type=None):
        extra = [fake_gpu] if device_type in (None, "GPU") else []
        return real(device_type) + extra

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0"])
    monkeypatch.setattr(tf.config, "list_physical_devices", with_gpu)
    assert _compiled_jit() is True
    assert _compiled_jit(mirrored) is False
    monkeypatch.setattr(tf.config, "list_physical_devices", real)
    assert _compiled_jit() is False
