"""The polling of idle workers and waiting callers can be turned off, and bad settings say so."""

from __future__ import annotations

import os
import subprocess
import sys

DRIVER = """
import distkernel as dk
from distkernel.core import config

dk.init(num_workers=2)

@dk.remote
def square(x):
    return x * x

@dk.remote
class Total:
    def __init__(self):
        self.total = 0
    def add(self, x):
        self.total += x
        return self.total

total = Total.remote()
assert [dk.get(square.remote(i)) for i in range(50)] == [i * i for i in range(50)]
assert [dk.get(total.add.remote(1)) for _ in range(50)] == list(range(1, 51))
print(config.WORKER_SPIN, config.DRIVER_SPIN)
dk.shutdown()
"""


def run_driver(tmp_path, **env: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env}, check=False)


def test_polling_turned_off_still_runs_tasks_and_actor_calls(tmp_path):
    done = run_driver(tmp_path, DISTKERNEL_WORKER_SPIN_US="0", DISTKERNEL_DRIVER_SPIN_US="0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0.0", "0.0"]


def test_a_spin_setting_that_is_not_a_number_is_reported(tmp_path):
    done = run_driver(tmp_path, DISTKERNEL_DRIVER_SPIN_US="fast")
    assert done.returncode != 0
    assert "DISTKERNEL_DRIVER_SPIN_US='fast' must be a whole number of microseconds" in done.stderr
