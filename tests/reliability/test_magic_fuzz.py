"""Generated ``%%remote`` and ``%dist`` argument lines through a real kernel: each cell runs
or shows a short usage message naming the magic, the kernel survives, and afterwards the
pool still runs tasks.

The lines are drawn with a fixed seed from valid fragments, known-bad values and random
junk (quotes, dashes, digits, non-ASCII letters, control characters, a very long word), so
a failure reproduces exactly. One kernel serves the whole batch to keep it quick.
"""

from __future__ import annotations

import random

import pytest

from tests.kernel_session import CellRun, KernelSession

SEED = 20240611
CELLS_PER_MAGIC = 40
REMOTE_BODY = "value = data + 1"

REMOTE_VALID = ["", "-n 1", "-n 2", "--all", "--push data", "--pull value", "--no-pull",
                "--timeout 30", "--timeout inf", "--quiet", "-h"]
REMOTE_BAD = ["-n 0", "-n -3", "-n {10**30}", "-n 1e3", "-n nan", "--timeout -1",
              "--timeout nan", "--timeout 0", "--timeout 1e30", "--timeout -inf", '--push "a',
              "--pull 'x", "--push 'a b'", "--push class", "--push missing", "--pull nothere",
              "--bogus", "-n", "--timeout", "--push ''", "-x", "--all=3", "--timeout=",
              "-n \uff13", "--push \x1b[31m", "--pull é"]
DIST_VALID = ["status", "timeline --last 5", "timeline", "timings summary", "timings off",
              "timings full", "timings on", "scale 2", "init", "init -n 2", "restart",
              "-h", "init -h", "scale -h", "timings -h", "shutdown", "init --store 256MB"]
DIST_BAD = ["scale 0", "scale -1", "scale {10**30}", "scale 1000000", "scale nan", "scale",
            "timeline --last 0", "timeline --last inf", "timings sideways", "timings",
            "bogus", "init -n 0", "init -n {10**30}", "init --store nan", "init --store inf",
            "init --store 1e30", "init --store -1", "init --address nowhere",
            'init --store "1GB', "status 'x", "restart --now", "''", "--help status"]
JUNK_ALPHABET = "abcxyz019-_.,'\" \t=éß中\x00\x07\x1b"


def junk(rng: random.Random) -> str:
    """A random word of awkward characters; now and then a very long one."""
    length = 4000 if rng.random() < 0.05 else rng.randint(1, 12)
    return "".join(rng.choice(JUNK_ALPHABET) for _ in range(length))


def generated_lines(rng: random.Random, valid: list[str], bad: list[str],
                    heads: tuple[str, ...] = ("",)) -> list[str]:
    """Lines of one valid fragment, or of one to three fragments (valid, bad, junk) in any
    order after a head word (a ``%dist`` subcommand, which may not fit them)."""
    lines = []
    for _ in range(CELLS_PER_MAGIC):
        if rng.random() < 0.3:
            lines.append(rng.choice(valid))
            continue
        fragments = [rng.choice(valid), rng.choice(bad), junk(rng)]
        rng.shuffle(fragments)
        kept = fragments[:rng.randint(1, 3)]
        lines.append(" ".join([rng.choice(heads), *kept]).strip())
    return lines


def remote_lines() -> list[str]:
    """Every fragment alone, then the generated mix."""
    mixed = generated_lines(random.Random(SEED), REMOTE_VALID, REMOTE_BAD)
    return REMOTE_VALID + REMOTE_BAD + mixed


def dist_lines() -> list[str]:
    heads = ("", "", "", "status", "init", "scale", "timeline", "timings")
    mixed = generated_lines(random.Random(SEED + 1), DIST_VALID, DIST_BAD, heads)
    return DIST_VALID + DIST_BAD + mixed


def check_outcome(run: CellRun, magic: str, line: str) -> None:
    """Ran, or a short usage message naming the magic, with nothing submitted before it."""
    if run.ok:
        return
    text = run.text()
    where = f"{magic} {line!r}:\n{text[:3000]}"
    assert run.reply.get("ename") == "UsageError", where
    assert not run.of_type("error") and "Traceback" not in text, where
    assert text.lstrip().startswith(f"UsageError: {magic}"), where
    assert len(text) < 3000 and len(text.splitlines()) < 40, where
    assert not run.timings(), f"work was submitted: {where}"


@pytest.fixture
def kernel():
    session = KernelSession("python3")
    try:
        assert session.run("%load_ext distkernel").ok
        yield session
    finally:
        session.shutdown()


def test_generated_magic_lines_run_or_show_usage_and_the_pool_survives(kernel):
    kernel.run("data = 1")
    for line in remote_lines():
        run = kernel.run(f"%%remote {line}\n{REMOTE_BODY}", timeout=30)
        assert kernel.manager.is_alive(), f"the kernel died on %%remote {line!r}"
        check_outcome(run, "%%remote", line)
    for line in dist_lines():
        run = kernel.run(f"%dist {line}", timeout=30)
        assert kernel.manager.is_alive(), f"the kernel died on %dist {line!r}"
        check_outcome(run, "%dist", line)
    cell = kernel.run("%%remote\nsum(range(10))")
    assert cell.ok and cell.of_type("execute_result")[0]["content"]["data"]["text/plain"] == "45"
    task = kernel.run("import distkernel as dk\n@dk.remote\ndef inc(x):\n    return x + 1\n\n"
                      "print(dk.get(inc.remote(41), timeout=30))")
    assert task.ok and "42" in task.text(), task.text()
