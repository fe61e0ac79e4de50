"""The store at the edge of its memory: a small or shared ``/dev/shm``, results larger
than the store. Nothing dies with a signal, nothing stored is lost, and a refusal is an
ObjectStoreFullError with the numbers and the fix.

Each driver runs as a script of its own, with ``DISTKERNEL_SHM_DIR`` pointing at a
small tmpfs mounted for the test.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import run_driver_script
from tests.kernel_session import KernelSession
from tests.reliability.shm_folders import mounted_tmpfs, shm_env

MIB = 2**20


def test_a_store_larger_than_its_folder_spills_instead_of_dying(tmp_path):
    with mounted_tmpfs(str(tmp_path / "shm"), 200) as shm:
        done = run_driver_script(tmp_path, """
            import numpy as np, distkernel as dk
            dk.init(2, object_store_memory="1GB")  # more than the 200 MiB folder
            refs = [dk.put(np.full(60 * 2**20 // 8, float(i))) for i in range(4)]
            print([float(dk.get(r)[-1]) for r in refs])
            print(dk.status()["object_store"]["spilled_bytes"] > 0)
        """, env=shm_env(shm))
    assert done.stdout.split("\n")[:2] == ["[0.0, 1.0, 2.0, 3.0]", "True"]


def test_a_full_folder_without_spilling_is_a_clear_error(tmp_path):
    with mounted_tmpfs(str(tmp_path / "shm"), 200) as shm:
        done = run_driver_script(tmp_path, """
            import numpy as np, distkernel as dk
            dk.init(2, object_store_memory="1GB")
            refs = [dk.put(np.full(60 * 2**20 // 8, float(i))) for i in range(3)]
            try:
                dk.put(np.zeros(60 * 2**20 // 8))
            except dk.ObjectStoreFullError as error:
                print(error)
            print([float(dk.get(r)[-1]) for r in refs])
        """, env=shm_env(shm, DISTKERNEL_SPILL_LIMIT="0"))
    error, values = done.stdout.strip().split("\n")
    assert "capacity" in error and "requested 60.0 MiB" in error and "free" in error
    assert "DISTKERNEL_SHM_DIR" in error and "Nothing stored was lost" in error
    assert values == "[0.0, 1.0, 2.0]"


def test_a_docker_sized_folder_holds_more_than_fits_in_it(tmp_path):
    with mounted_tmpfs(str(tmp_path / "shm"), 64) as shm:  # Docker's default /dev/shm
        done = run_driver_script(tmp_path, """
            import numpy as np, distkernel as dk
            dk.init(2)  # the default store: a share of the small folder

            @dk.remote
            def make(fill):
                return np.full(20 * 2**20 // 8, fill)

            refs = [make.remote(float(i)) for i in range(5)] + [dk.put(np.ones(2**21))]
            print(sorted({float(dk.get(r)[0]) for r in refs}))
        """, env=shm_env(shm))
    assert done.stdout.strip() == "[0.0, 1.0, 2.0, 3.0, 4.0]"


TWO_DRIVERS = """
    import sys
    import numpy as np, distkernel as dk
    dk.init(1)  # both size their store from the same free space
    print("started", flush=True)
    sys.stdin.readline()
    first = dk.put(np.full(90 * 2**20 // 8, 1.0))
    print("stored", flush=True)
    sys.stdin.readline()
    try:
        second = dk.put(np.full(60 * 2**20 // 8, 2.0))
        print("ok", float(dk.get(first)[0]), float(dk.get(second)[0]), flush=True)
    except dk.ObjectStoreFullError as error:
        print("full", float(dk.get(first)[0]), "free" in str(error), flush=True)
"""


def run_two_drivers(tmp_path, shm: str, **env: str) -> list[str]:
    """Two drivers on one folder: both start, then both store, then both store more."""
    script = tmp_path / "two.py"
    script.write_text(textwrap.dedent(TWO_DRIVERS))
    drivers = [subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=shm_env(shm, **env))
               for _ in range(2)]
    try:
        for driver in drivers:
            assert driver.stdout.readline().strip() == "started"
        for driver in drivers:  # the first stores, then the second
            driver.stdin.write("go\n")
            driver.stdin.flush()
            assert driver.stdout.readline().strip() == "stored"
        lines = []
        for driver in drivers:  # each stores more, in turn
            out, _ = driver.communicate("go\n", timeout=60)
            assert driver.returncode == 0, f"a driver died with {driver.returncode}"
            lines.append(out.strip())
        return lines
    finally:
        for driver in drivers:
            if driver.poll() is None:
                driver.kill()
            driver.wait()


def test_two_drivers_on_one_small_folder_both_live(tmp_path):
    with mounted_tmpfs(str(tmp_path / "shm"), 200) as shm:
        assert run_two_drivers(tmp_path, shm) == ["ok 1.0 2.0", "ok 1.0 2.0"]
        refused = run_two_drivers(tmp_path, shm, DISTKERNEL_SPILL_LIMIT="0")
    assert "full 1.0 True" in refused  # the one that found no room says so, and lives


def test_dist_init_with_a_store_larger_than_the_folder_keeps_the_kernel(tmp_path):
    with mounted_tmpfs(str(tmp_path / "shm"), 200) as shm:
        session = KernelSession("python3", env=shm_env(shm))
        try:
            assert session.run("%load_ext distkernel").ok
            assert session.run("%dist shutdown").ok
            assert session.run("%dist init --store 1GB").ok
            cell = session.run(
                "import numpy as np, distkernel as dk\n"
                "refs = [dk.put(np.full(60 * 2**20 // 8, float(i))) for i in range(4)]\n"
                "print([float(dk.get(r)[-1]) for r in refs])")
            assert cell.ok, cell.text()
            assert "[0.0, 1.0, 2.0, 3.0]" in cell.text()
            assert session.run("%dist status").ok
            assert "spilled to disk" in session.run("%dist status").text()
        finally:
            session.shutdown()


PEAK_SAMPLER = """
    import os, shutil, threading

    PEAK = [0]


    def sample_peak_use():
        # The shared-memory folder's use, every 2 ms, until the returned event is set.
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                PEAK[0] = max(PEAK[0], shutil.disk_usage(os.environ["DISTKERNEL_SHM_DIR"]).used)
                stop.wait(0.002)

        threading.Thread(target=sample, daemon=True).start()
        return stop
"""


def test_a_result_larger_than_the_store_is_refused_before_anything_is_written(tmp_path):
    with mounted_tmpfs(str(tmp_path / "shm"), 1200) as shm:
        done = run_driver_script(tmp_path, """
            import numpy as np, distkernel as dk
            dk.init(1, object_store_memory="300MB")

            @dk.remote
            def huge():
                return np.ones(2**30 // 8)  # 1 GiB

            stop = sample_peak_use()
            try:
                dk.get(huge.remote())
            except dk.ObjectStoreFullError as error:
                print("refused", "capacity 286.1 MiB" in str(error))
            stop.set()
            print(PEAK[0] // 2**20)
            print(dk.get(dk.put(np.ones(10))).sum())
        """, env=shm_env(shm), prelude=PEAK_SAMPLER)
    refused, peak_mib, after = done.stdout.strip().split("\n")
    assert refused == "refused True"
    assert int(peak_mib) < 64  # not one byte of the 1 GiB went to shared memory
    assert after == "10.0"


def test_concurrent_large_results_stay_within_the_capacity(tmp_path):
    with mounted_tmpfs(str(tmp_path / "shm"), 1500) as shm:
        done = run_driver_script(tmp_path, """
            import numpy as np, distkernel as dk
            dk.init(4, object_store_memory="600MB")

            @dk.remote
            def make(fill):
                return np.full(250 * 2**20 // 8, fill)

            stop = sample_peak_use()
            refs = [make.remote(float(i)) for i in range(4)]
            dk.wait(refs, num_returns=4)
            stop.set()
            print([float(dk.get(r)[-1]) for r in refs])
            print(PEAK[0] // 2**20)
        """, env=shm_env(shm), prelude=PEAK_SAMPLER)
    values, peak_mib = done.stdout.strip().split("\n")
    assert values == "[0.0, 1.0, 2.0, 3.0]"
    assert int(peak_mib) <= 600 * 10**6 // MIB + 64  # the capacity, and one chunk of slack
