"""Who may name, create and delete the cluster's files: only the driver, under names
nobody can guess, and no other driver while this one lives (whatever its pid says)."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import textwrap

import numpy as np
import psutil
import pytest

import distkernel as dk
from distkernel.api import runtime
from distkernel.core import config
from distkernel.store import reaper
from tests.conftest import our_segments, wait_until

MIB = 2**20


def taken_first(name: str):
    """``secrets.token_hex`` whose first segment-sized answer is ``name``."""
    real, given = secrets.token_hex, []

    def token_hex(nbytes: int) -> str:
        if nbytes == 8 and not given:
            given.append(name)
            return name
        return real(nbytes)

    return token_hex


def test_names_someone_else_took_first_are_skipped(monkeypatch):
    pid = os.getpid()
    # The predictable names of earlier versions, made beforehand by someone else.
    squatted = [os.path.join(config.SHM_DIR, f"distkernel-{pid}-arena{i}") for i in range(3)]
    for path in squatted:
        with open(path, "wb") as handle:
            handle.write(b"not yours")
    try:
        dk.init(1)
        space = runtime.engine().space
        # ... and the next random name, taken in the instant before we try it.
        taken = f"{space.prefix}-{'0' * 16}"
        with open(os.path.join(config.SHM_DIR, taken), "wb") as handle:
            handle.write(b"not yours either")
        monkeypatch.setattr(reaper.secrets, "token_hex", taken_first("0" * 16))
        value = dk.get(dk.put(np.arange(MIB)))
        assert value[-1] == MIB - 1
        with open(os.path.join(config.SHM_DIR, taken), "rb") as handle:
            assert handle.read() == b"not yours either"
        for path in squatted:
            with open(path, "rb") as handle:
                assert handle.read() == b"not yours"
        os.unlink(os.path.join(config.SHM_DIR, taken))
    finally:
        for path in squatted:
            os.unlink(path)


def test_files_are_private_and_the_lock_hidden(cluster):
    ref = dk.put(np.arange(MIB))
    space = runtime.engine().space
    for name in our_segments():
        assert space.owns(name)
        assert stat.S_IMODE(os.stat(os.path.join(config.SHM_DIR, name)).st_mode) == 0o600
    lock = os.path.basename(space.lock_path)
    assert lock.startswith(".") and lock not in our_segments()
    del ref


def namespaces_available() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True)
    return probe.returncode == 0


needs_namespaces = pytest.mark.skipif(not namespaces_available(),
                                      reason="cannot make a PID namespace here (needs root)")

OTHER_NAMESPACE_DRIVER = """
    import os, distkernel as dk
    print(os.getpid(), os.path.exists("/proc/{pid}"))
    dk.init(1)
    dk.shutdown()
"""


@needs_namespaces
def test_a_driver_in_another_pid_namespace_leaves_a_live_drivers_files(cluster):
    ref = dk.put(np.arange(4 * MIB))
    before = set(our_segments())
    source = textwrap.dedent(OTHER_NAMESPACE_DRIVER).format(pid=os.getpid())
    done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c",
                           source], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    _, sees_us = done.stdout.split()
    assert sees_us == "False"  # our pid means nothing there: only the lock can tell
    assert set(our_segments()) == before
    assert dk.get(ref)[-1] == 4 * MIB - 1


KILLED_WITH_ITS_WORKERS = """
    import numpy as np, distkernel as dk
    dk.init(1)
    ref = dk.put(np.arange(2**20))
    print("stored", flush=True)
    import time; time.sleep(60)
"""


@needs_namespaces
def test_a_dead_drivers_files_are_swept_from_another_pid_namespace(tmp_path):
    script = tmp_path / "victim.py"
    script.write_text(textwrap.dedent(KILLED_WITH_ITS_WORKERS))
    victim = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    assert victim.stdout.readline().strip() == "stored"
    workers = [c.pid for c in psutil.Process(victim.pid).children()]
    for pid in [*workers, victim.pid]:  # workers first: nobody is left to clean up
        os.kill(pid, signal.SIGKILL)
    victim.wait()
    victim.stdout.close()
    assert wait_until(lambda: not any(psutil.pid_exists(p) for p in workers))
    assert reaper.segments_of(victim.pid)
    done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c",
                           "import distkernel as dk; dk.init(1); dk.shutdown()"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert reaper.segments_of(victim.pid) == []
    hidden = [n for n in os.listdir(config.SHM_DIR) if n.startswith(f".distkernel-{victim.pid}-")]
    assert hidden == []


FORGER = """
def forge(targets):
    from distkernel.core import context
    from distkernel.core.protocol import Place, PutRequest, RefDelta, ReleaseRequest, SharedValue
    client = context.worker_client()
    outcomes = []
    for target in targets:
        value = SharedValue(target, 4096, 1, ((64, 8),))
        try:
            client._call(PutRequest(client._next_id(), "forged", value))
            outcomes.append("accepted")
        except Exception as error:
            outcomes.append(type(error).__name__)
        link = client._worker.link
        link.send(ReleaseRequest(Place(target, 0, 4096)))
        link.send(RefDelta(views_opened=((target, 0),), views_closed=((target, 0),)))
    return outcomes
"""


def test_a_worker_cannot_make_the_driver_adopt_or_delete_a_file(cluster, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    in_shm = os.path.join(config.SHM_DIR, f"distkernel-{os.getpid()}-{'1' * 12}-{'2' * 16}")
    with open(in_shm, "w") as handle:
        handle.write("keep me too")
    ref = dk.put(np.arange(MIB))  # a real chunk, whose name a task might learn
    real_chunk = our_segments()[0]
    try:
        namespace: dict = {}
        exec(FORGER, namespace)
        forge = dk.remote(namespace["forge"])
        relative = os.path.relpath(str(victim), config.SHM_DIR)
        targets = [relative, str(victim), os.path.basename(in_shm), real_chunk,
                   "../" * 8 + "etc/passwd"]
        outcomes = dk.get(forge.remote(targets), timeout=60)
        assert outcomes == ["DistkernelError"] * len(targets)
        assert victim.read_text() == "keep me"
        with open(in_shm) as handle:
            assert handle.read() == "keep me too"
        assert dk.get(ref)[-1] == MIB - 1  # the real chunk and its object are intact
        assert dk.get(dk.put(np.ones(MIB))).sum() == MIB
    finally:
        os.unlink(in_shm)


def test_names_from_messages_are_checked_on_both_sides(cluster):
    space = runtime.engine().space
    for bad in ["../x", "/etc/passwd", f"{space.prefix}-../../x", f"{space.prefix}-ABC",
                space.prefix, f"distkernel-1-{'a' * 12}-{'b' * 16}", ""]:
        assert not space.owns(bad)
        with pytest.raises(ValueError, match="not a shared-memory segment of this cluster"):
            space.segment_path(bad)
    assert not space.owns_spill_file("/tmp", "/etc/passwd")
