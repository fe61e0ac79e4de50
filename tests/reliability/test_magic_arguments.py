"""Bad arguments to ``%%remote`` and ``%dist`` give a usage message that names the magic,
never a traceback, and never after the cell's work was submitted.

The magics run in a real IPython shell with the extension loaded and a real one-worker
cluster in this process, so each case costs milliseconds; ``test_magic_fuzz.py`` drives
the same magics through a real kernel.
"""

from __future__ import annotations

import sys

import pytest
from IPython.core.error import UsageError

import distkernel as dk

REMOTE_BODY = "value = 1"


@pytest.fixture
def shell():
    """An IPython shell with ``%load_ext distkernel`` on a one-worker cluster."""
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    config = Config()
    config.HistoryManager.hist_file = ":memory:"
    hooks = sys.displayhook, sys.excepthook
    instance = InteractiveShell.instance(config=config)
    dk.init(1)
    instance.run_line_magic("load_ext", "distkernel")
    instance.user_ns["data"] = 7
    try:
        yield instance
    finally:
        instance.run_line_magic("unload_ext", "distkernel")
        instance.history_manager.end_session()
        InteractiveShell.clear_instance()
        sys.displayhook, sys.excepthook = hooks


def dist(shell, line: str):
    return shell.run_line_magic("dist", line)


def remote(shell, line: str, body: str = REMOTE_BODY):
    return shell.run_cell_magic("remote", line, body)


def refused(call, *args) -> str:
    """The usage message of a call that must be refused."""
    with pytest.raises(UsageError) as caught:
        call(*args)
    return str(caught.value)


# -- unbalanced quotes ---------------------------------------------------------------------

@pytest.mark.parametrize("line", ['init --store "1GB', "scale '3", 'timings "on', '"'])
def test_unbalanced_quote_in_dist_is_a_usage_error(shell, line):
    message = refused(dist, shell, line)
    assert message.startswith("%dist") and "quot" in message


@pytest.mark.parametrize("line", ['--push "a', "--pull 'value", "--timeout '5", "-n 1 '"])
def test_unbalanced_quote_in_remote_is_a_usage_error_and_submits_nothing(shell, line):
    before = len(dk.timeline())
    message = refused(remote, shell, line)
    assert message.startswith("%%remote") and "quot" in message
    assert len(dk.timeline()) == before


# -- help ----------------------------------------------------------------------------------

@pytest.mark.parametrize("line", ["-h", "--help"])
def test_dist_help_flag_shows_the_same_help_as_bare_dist(shell, line):
    shown = dist(shell, line)
    assert repr(shown) == repr(dist(shell, "")) and "usage: %dist" in repr(shown)


@pytest.mark.parametrize(("command", "detail"), [
    ("status", "usage: %dist status"), ("init", "--store"), ("scale", "workers"),
    ("restart", "usage: %dist restart"), ("shutdown", "usage: %dist shutdown"),
    ("timeline", "--last"), ("timings", "summary")])
def test_dist_subcommand_help_shows_that_help_and_does_nothing(shell, command, detail):
    cluster = dk.status()["cluster_id"]
    shown = repr(dist(shell, f"{command} -h"))
    assert f"usage: %dist {command}" in shown and detail in shown
    assert dk.is_initialized() and dk.status()["cluster_id"] == cluster


def test_remote_help_flag_shows_the_options_and_runs_nothing(shell):
    before = len(dk.timeline())
    shown = repr(remote(shell, "--help", "ran = True"))
    assert "%%remote" in shown and "--timeout" in shown and "--push" in shown
    assert "ran" not in shell.user_ns and len(dk.timeline()) == before


# -- %%remote option values ----------------------------------------------------------------

BAD_REMOTE_LINES = [
    "--timeout -1", "--timeout 0", "--timeout nan", "--timeout -inf", "--timeout 1e30",
    "--timeout abc", "--timeout ''", "--timeout",
    "-n 0", "-n -1", "-n {10**30}", "-n abc", "-n 1.5", "-n", "-n 1 --all", "--all 2",
    "--bogus", "--quiet now", "--push 'a b'", "--push 1x", "--push class", "--push missing",
    "--push café", "--pull nothere", "--pull value --no-pull",
    "--pull 'a-b'", "-n \uff13", "--push \x1b[31m", "--timeout " + "x" * 10_000,
]


@pytest.mark.parametrize("line", BAD_REMOTE_LINES)
def test_bad_remote_arguments_are_refused_before_anything_is_submitted(shell, line):
    before = len(dk.timeline())
    message = refused(remote, shell, line)
    assert message.startswith("%%remote"), message
    assert len(dk.timeline()) == before
    assert "value" not in shell.user_ns


@pytest.mark.parametrize("line", ["--timeout -1", "--timeout nan", "--timeout 0"])
def test_bad_timeout_message_says_what_to_give(shell, line):
    message = refused(remote, shell, line)
    assert "--timeout" in message and "> 0" in message and "inf" in message


def test_infinite_timeout_means_no_timeout(shell):
    assert remote(shell, "--timeout inf", "6 * 7") == 42
    assert "inf" in repr(remote(shell, "-h"))


def test_valid_remote_options_still_run(shell):
    assert remote(shell, "-n 1 --push data --pull value --timeout 30 --quiet",
                  "value = data * 2\nvalue") == 14
    assert shell.user_ns["value"] == 14


# -- %dist subcommand values ---------------------------------------------------------------

BAD_DIST_LINES = [
    "scale 0", "scale -1", "scale abc", "scale ''",
    "scale 1.5", "scale nan", "scale", "scale 2 3", "scale \x00", "scale é",
    "scale " + "9" * 5000,
    "timeline --last 0", "timeline --last -5", "timeline --last nan", "timeline --last ''",
    "timings sideways", "timings ''", "timings ON", "timings \x1b[31mon",
    "bogus", "''", "status --bogus", "status extra", "restart now", "shutdown --force",
    "init -n 0", "init -n -2", "init -n {10**30}", "init -n inf", "init -n 2",
    "init --address bogus", "init --address ''", "init --address ray",
    "init --store nan", "init --store inf", "init --store -1", "init --store 1e30",
    "init --store ''", "init --store 2GB", "scale {10**30}", "scale 1000000",
]


@pytest.mark.parametrize("line", BAD_DIST_LINES)
def test_bad_dist_arguments_are_usage_errors_and_change_nothing(shell, line):
    cluster = dk.status()["cluster_id"]
    message = refused(dist, shell, line)
    assert message.startswith("%dist"), message
    assert dk.status()["cluster_id"] == cluster and dk.status()["num_workers"] == 1


@pytest.mark.parametrize(("line", "call"), [
    ("init -n 2", lambda: dk.init(2)),
    ("init --store nan", lambda: dk.init(object_store_memory="nan")),
    ("init --store -1", lambda: dk.init(object_store_memory="-1")),
    ("init --address bogus", lambda: dk.init(address="bogus")),
    ("init --address ray", lambda: dk.init(address="ray")),
])
def test_dist_init_carries_the_message_init_raises(shell, line, call):
    with pytest.raises((ValueError, TypeError, dk.DistkernelError)) as direct:
        call()
    assert str(direct.value) in refused(dist, shell, line)


def test_scale_beyond_the_machine_says_the_limit(shell):
    message = refused(dist, shell, "scale 1000000")
    assert "at most" in message and "1000000" in message


# -- how messages read ---------------------------------------------------------------------

@pytest.mark.parametrize(("call", "line"), [
    (dist, "scale " + "9" * 5000), (dist, "timings " + "z" * 5000),
    (remote, "--push " + "q" * 5000), (remote, "--bogus" + "w" * 5000),
])
def test_usage_messages_stay_short_for_very_long_arguments(shell, call, line):
    assert len(refused(call, shell, line)) < 1500


@pytest.mark.parametrize(("call", "line"), [
    (dist, "timings \x1b[31mon"), (dist, "bogus\x07"), (remote, "--bogus \x00\x1b[2J"),
    (remote, "--push \x1b[31m"),
])
def test_usage_messages_show_control_characters_escaped(shell, call, line):
    message = refused(call, shell, line)
    assert not any(ord(c) < 32 and c != "\n" for c in message), repr(message)


def test_pool_keeps_working_after_usage_errors(shell):
    for line in BAD_REMOTE_LINES[:8]:
        refused(remote, shell, line)
    for line in BAD_DIST_LINES[:8]:
        refused(dist, shell, line)
    assert remote(shell, "", "sum(range(10))") == 45
    assert dk.get(dk.remote(lambda x: x + 1).remote(41)) == 42
