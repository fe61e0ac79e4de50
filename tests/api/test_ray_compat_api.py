"""Ray programs run with ``import distkernel as ray``: init, wait, argument checks, task
options, errors of nested tasks, array alignment and the small cluster-info names.

Each test drives the API as a snippet written for Ray does, through real worker processes.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

import distkernel as ray
from distkernel.store import serialization
from tests.conftest import run_driver_script, wait_until


@ray.remote
def one(x):
    return x


@ray.remote
def anything(*args, **kwargs):
    return len(args) + len(kwargs)


@ray.remote
def environment(name):
    return os.environ.get(name), os.getcwd()


@ray.remote
def gpu_ids():
    return ray.get_gpu_ids()


# -- init --------------------------------------------------------------------------------------

def test_init_takes_num_cpus_as_the_pool_size():
    info = ray.init(num_cpus=2)
    assert info.num_workers == 2
    assert ray.status()["num_workers"] == 2
    assert ray.cluster_resources()["CPU"] == 2
    assert ray.get([one.remote(i) for i in range(4)]) == [0, 1, 2, 3]


def test_init_first_argument_is_the_address_or_a_worker_count():
    info = ray.init("local")
    assert info.address == "local"
    ray.shutdown()
    assert ray.init(1).num_workers == 1  # distkernel's own short form
    ray.shutdown()
    assert ray.init("local", num_cpus=1).num_workers == 1


@pytest.mark.parametrize("address", ["ray", "auto", "head:6379", "ray://head:10001"])
def test_a_ray_address_without_ray_installed_says_how_to_install_it(tmp_path, address):
    done = run_driver_script(tmp_path, f"""
        import sys
        sys.modules["ray"] = None  # as if Ray were not installed
        import distkernel as dk
        for call in (lambda: dk.init({address!r}), lambda: dk.init(address={address!r})):
            try:
                call()
            except dk.DistkernelError as error:
                print(error)
            else:
                raise AssertionError("init started")
        assert not dk.is_initialized()
        """)
    assert done.stdout.count("pip install 'distkernel[ray]'") == 2, done.stdout


@pytest.mark.parametrize("address", ["ray", "auto", "head:6379"])
def test_another_engine_is_not_started_next_to_the_running_one(address):
    info = ray.init(num_cpus=1)
    with pytest.raises(ray.DistkernelError, match=f"address='{address}' \\(running: 'local'\\)"):
        ray.init(address=address)
    assert ray.init(address=address, ignore_reinit_error=True) == info
    assert ray.init(address="local") == info and ray.init() == info


@pytest.mark.parametrize("address", ["nowhere", "http://head:8265", "ray:/head"])
def test_an_address_that_is_neither_local_nor_ray_is_refused(address):
    with pytest.raises(ValueError, match="not a known address"):
        ray.init(address=address)
    assert not ray.is_initialized()


def test_init_refuses_conflicting_sizes_and_misplaced_cpus_or_gpus():
    with pytest.raises(ValueError, match="num_workers=2, num_cpus=3.*give one"):
        ray.init(num_workers=2, num_cpus=3)
    with pytest.raises(ValueError, match="give it once"):
        ray.init(2, num_workers=3)
    with pytest.raises(ValueError, match="at least|>= 1"):
        ray.init(num_cpus=0)
    with pytest.raises(ValueError, match="use num_cpus="):
        ray.init(resources={"CPU": 2})
    with pytest.raises(ValueError, match="use num_gpus="):
        ray.init(resources={"GPU": 1})
    with pytest.raises(ValueError, match="num_gpus.*whole number"):
        ray.init(num_gpus=1.5)
    assert not ray.is_initialized()


def test_init_gpus_and_custom_resources_are_the_clusters():
    ray.init(num_cpus=2, num_gpus=2, resources={"db": 1, "license": 0.5})
    total = ray.cluster_resources()
    assert (total["CPU"], total["GPU"], total["db"], total["license"]) == (2, 2, 1, 0.5)
    assert total["object_store_memory"] > 0
    assert ray.get(one.options(resources={"db": 1}).remote(5)) == 5
    assert ray.get_gpu_ids() == []  # the driver is given no GPU, as in Ray
    given = ray.get(gpu_ids.options(num_gpus=1).remote())
    assert len(given) == 1 and given[0] in (0, 1)


def test_init_runtime_env_env_vars_and_working_dir(tmp_path, monkeypatch):
    (tmp_path / "helper_module_for_workers.py").write_text("ANSWER = 42\n")
    monkeypatch.setenv("DK_TEST_BASE", "base")

    @ray.remote
    def use_module():
        import helper_module_for_workers

        return helper_module_for_workers.ANSWER

    ray.init(num_cpus=1, runtime_env={"env_vars": {"DK_TEST_VAR": "${DK_TEST_BASE}-x"},
                                      "working_dir": str(tmp_path)})
    value, cwd = ray.get(environment.remote("DK_TEST_VAR"))
    assert value == "base-x"  # "${NAME}" is expanded, as Ray does
    assert os.path.samefile(cwd, tmp_path)
    assert ray.get(use_module.remote()) == 42


@pytest.mark.parametrize(("field", "advice"), [
    ("pip", "install the packages"), ("conda", "conda environment"),
    ("py_modules", "working_dir"), ("container", "container"), ("image_uri", "image"),
    ("something_else", "env_vars, working_dir")])
def test_init_runtime_env_fields_that_need_ray_are_refused_with_the_alternative(field, advice):
    with pytest.raises(ValueError, match=advice) as info:
        ray.init(runtime_env={field: ["x"]})
    assert "supports env_vars, working_dir" in str(info.value)
    assert not ray.is_initialized()


def test_init_runtime_env_working_dir_must_be_a_local_folder(tmp_path):
    with pytest.raises(ValueError, match="existing local folder"):
        ray.init(runtime_env={"working_dir": str(tmp_path / "missing")})
    with pytest.raises(ValueError, match="existing local folder"):
        ray.init(runtime_env={"working_dir": "s3://bucket/code.zip"})
    with pytest.raises(TypeError, match="map names to strings"):
        ray.init(runtime_env={"env_vars": {"N": 1}})
    assert not ray.is_initialized()


@pytest.mark.parametrize(("env_vars", "says"), [
    ({"A": "x\0y"}, "'A'] contains a NUL character"),
    ({"A\0": "1"}, "invalid variable name 'A\\x00'"),
    ({"A=B": "1"}, "invalid variable name 'A=B'"),
    ({"": "1"}, "invalid variable name ''")])
def test_init_runtime_env_vars_the_system_refuses_are_named(env_vars, says):
    with pytest.raises(ValueError) as info:
        ray.init(runtime_env={"env_vars": env_vars})
    assert says in str(info.value)
    assert not ray.is_initialized()


def test_init_accepts_every_keyword_of_rays_init():
    """A Ray 2.x init line never fails with TypeError; harmless keywords are accepted."""
    info = ray.init(None, num_cpus=1, num_gpus=0, resources={}, labels={"zone": "a"},
                    object_store_memory=64 * 1024 * 1024, local_mode=False,
                    ignore_reinit_error=True, include_dashboard=False,
                    dashboard_host="127.0.0.1", dashboard_port=None, job_config=None,
                    configure_logging=True, logging_level=logging.WARNING,
                    logging_format=None, logging_config=None, log_to_driver=True,
                    namespace="compat", runtime_env=None, enable_resource_isolation=False,
                    cgroup_path=None, system_reserved_cpu=None, system_reserved_memory=None,
                    proxy_server_url=None, _system_config={"a": 1}, _temp_dir=None,
                    _plasma_directory=None, _node_ip_address=None, _metrics_export_port=None,
                    _memory=None, _redis_password=None, _node_name=None,
                    _enable_object_reconstruction=False, _driver_object_store_memory=None,
                    _tracing_startup_hook=None, _skip_env_hook=False, _redis_username=None)
    assert info.num_workers == 1


def test_init_knows_every_named_keyword_of_the_installed_ray():
    """Checked against Ray itself when it is installed (in a child process: importing Ray
    here would change this process for later tests)."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed")
    listed = subprocess.run(
        [sys.executable, "-c", "import inspect, json, ray; print(json.dumps([n for n, p in "
         "inspect.signature(ray.init).parameters.items() if p.kind != p.VAR_KEYWORD]))"],
        capture_output=True, text=True, timeout=120, check=True)
    theirs = json.loads(listed.stdout.strip().splitlines()[-1])
    from distkernel.api import runtime

    known = (set(inspect.signature(ray.init).parameters) | set(runtime.IGNORED_INIT_OPTIONS)
             | set(runtime.REFUSED_INIT_OPTIONS))
    assert "num_cpus" in theirs
    assert [name for name in theirs if name not in known] == []


@pytest.mark.parametrize(("keyword", "value", "advice"), [
    ("object_spilling_directory", "spill", "DISTKERNEL_SPILL_DIR"),
    ("enable_resource_isolation", True, "cgroups"),
    ("allow_multiple", True, "shutdown"),
    ("storage", "storage", "removed")])
def test_init_refuses_what_rests_on_a_ray_cluster(keyword, value, advice):
    with pytest.raises(ValueError, match=advice):
        ray.init(**{keyword: value})
    with pytest.raises(TypeError, match="unknown keyword 'num_cpu'.*valid keywords"):
        ray.init(num_cpu=2)
    assert not ray.is_initialized()


def test_init_logging_level_and_dashboard(caplog):
    logger = logging.getLogger("distkernel")
    before = logger.level
    try:
        with caplog.at_level(logging.WARNING, logger="distkernel"):
            ray.init(num_cpus=1, logging_level="debug", include_dashboard=True)
            assert logger.level == logging.DEBUG
        assert "no dashboard" in caplog.text
        with pytest.raises(ValueError, match="logging level"):
            ray.init(logging_level="chatty")
    finally:
        logger.setLevel(before)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)


def test_init_again_returns_the_same_cluster_or_says_why_not():
    first = ray.init(num_cpus=2, namespace="one")
    assert ray.init() is first
    assert ray.init(num_cpus=2, namespace="one") is first
    with pytest.raises(ray.DistkernelError, match=r"num_workers=3.*running: 2.*shutdown\(\)"):
        ray.init(num_cpus=3)
    with pytest.raises(ray.DistkernelError, match="namespace"):
        ray.init(namespace="two")
    assert ray.init(num_cpus=3, ignore_reinit_error=True) is first  # Ray: keep the running one
    assert ray.status()["num_workers"] == 2


def test_init_returns_a_context_like_rays():
    with ray.init(num_cpus=1) as context:
        assert context.address_info["node_ip_address"] == "127.0.0.1"
        assert context["address"] == context.address_info["address"] == "local"
        assert context.address_info["object_store_address"]
        assert context.dashboard_url is None
        assert ray.get(one.remote(1)) == 1
    assert not ray.is_initialized()  # the block's end shut it down, as Ray's context does
    ray.init(num_cpus=1).disconnect()
    assert not ray.is_initialized()


def test_restart_keeps_the_settings(tmp_path):
    from distkernel.api import runtime

    first = ray.init(num_cpus=1, num_gpus=1, resources={"db": 1}, namespace="kept",
                     runtime_env={"env_vars": {"DK_KEPT": "yes"}, "working_dir": str(tmp_path)})
    second = runtime.restart()
    assert second.cluster_id != first.cluster_id and second.namespace == "kept"
    assert ray.cluster_resources()["GPU"] == 1 and ray.cluster_resources()["db"] == 1
    value, cwd = ray.get(environment.remote("DK_KEPT"))
    assert value == "yes" and os.path.samefile(cwd, tmp_path)


def test_namespace_is_known_in_the_driver_and_in_tasks():
    @ray.remote
    def namespace_here():
        return ray.get_runtime_context().namespace

    ray.init(num_cpus=1, namespace="team")
    assert ray.get_runtime_context().namespace == "team"
    assert ray.get(namespace_here.remote()) == "team"
    ray.shutdown()
    ray.init(num_cpus=1)  # none given: a namespace of its own, as Ray's anonymous one
    name = ray.get_runtime_context().namespace
    assert name and ray.get(namespace_here.remote()) == name


# -- wait ------------------------------------------------------------------------------------

def test_wait_of_nothing_is_nothing(cluster):
    assert ray.wait([]) == ([], [])
    assert ray.wait([], num_returns=0) == ([], [])  # wait(refs, num_returns=len(refs))
    assert ray.wait([], num_returns=1, timeout=0.1) == ([], [])


# -- arguments are checked at submission -------------------------------------------------------

def test_arguments_that_do_not_fit_raise_type_error_at_submission(cluster):
    with pytest.raises(TypeError, match=r"one\.remote.*too many positional arguments"):
        one.remote(1, 2)
    with pytest.raises(TypeError, match=r"one.*missing a required argument: 'x'"):
        one.remote()
    with pytest.raises(TypeError, match="unexpected keyword argument 'y'"):
        one.remote(1, y=2)
    assert ray.timeline() == []  # nothing was sent
    assert ray.get(one.remote(x=3)) == 3
    assert ray.get(anything.remote(1, 2, a=3)) == 3


def test_arguments_are_checked_inside_tasks_too(cluster):
    @ray.remote
    def caller():
        try:
            one.remote(1, 2)
        except TypeError as exc:
            return str(exc)
        return "accepted"

    assert "too many positional arguments" in ray.get(caller.remote())


@pytest.mark.local_only("counts the local front's reads of a signature")
def test_the_signature_is_found_once_per_function_not_per_call(cluster, monkeypatch):
    @ray.remote
    def three(a, b, c=0):
        return a + b + c

    calls = []
    real = inspect.signature
    monkeypatch.setattr(inspect, "signature", lambda *a, **k: calls.append(a) or real(*a, **k))
    refs = [three.remote(i, 1) for i in range(50)]
    refs += [three.options(name="again").remote(i, 1, c=1) for i in range(50)]
    assert ray.get(refs) == [i + 1 for i in range(50)] + [i + 2 for i in range(50)]
    assert len(calls) == 1


# -- task options ------------------------------------------------------------------------------

def test_task_resource_options_are_accepted_and_checked():
    ray.init(num_cpus=2, num_gpus=1, resources={"db": 2})
    assert ray.get(one.options(num_cpus=2, num_gpus=1, resources={"db": 2},
                               memory=10**9).remote(7)) == 7
    with pytest.raises(ValueError, match="use num_cpus="):
        one.options(resources={"CPU": 1})
    with pytest.raises(ValueError, match="use num_gpus="):
        one.options(resources={"GPU": 1})
    with pytest.raises(ValueError, match=r"resources\['db'\] must be a number >= 0"):
        one.options(resources={"db": -1})
    with pytest.raises(TypeError, match="names must be non-empty strings"):
        one.options(resources={1: 1})
    with pytest.raises(TypeError, match="must be a dict"):
        one.options(resources=["db"])
    with pytest.raises(ValueError, match="num_gpus must be below 1"):
        one.options(num_gpus=1.5)
    with pytest.raises(ValueError, match="num_cpus must be a number >= 0"):
        one.options(num_cpus=-1)


def test_task_options_reach_the_engine_as_ray_names_them(cluster):
    options = one.options(num_cpus=0.5, num_gpus=0.25, resources={"b": 1, "a": 2},
                          retry_exceptions=[ValueError, KeyError])._task_options
    assert (options.num_cpus, options.num_gpus) == (0.5, 0.25)
    assert options.resources == (("a", 2.0), ("b", 1.0))
    assert serialization.deserialize(options.retry_exceptions) == (ValueError, KeyError)
    assert one.options(retry_exceptions=True)._task_options.retry_exceptions is True
    assert one._task_options.retry_exceptions is False
    with pytest.raises(TypeError, match="list of exception classes"):
        one.options(retry_exceptions=["ValueError"])


def test_retry_exceptions_runs_the_task_again(cluster, tmp_path):
    @ray.remote(max_retries=2, retry_exceptions=[ConnectionError])
    def flaky(path):
        tries = int(open(path).read()) + 1 if os.path.exists(path) else 1
        with open(path, "w") as handle:
            handle.write(str(tries))
        if tries < 3:
            raise ConnectionError(f"try {tries}")
        return tries

    assert ray.get(flaky.remote(str(tmp_path / "tries"))) == 3
    with pytest.raises(ConnectionError, match="try 1"):
        ray.get(flaky.options(retry_exceptions=[KeyError]).remote(str(tmp_path / "other")))


@pytest.mark.parametrize("strategy", ["DEFAULT", "SPREAD", None])
def test_scheduling_strategy_hints_run(cluster, strategy):
    assert ray.get(one.options(scheduling_strategy=strategy).remote(2)) == 2


@pytest.mark.local_only("on Ray these options are Ray's own")
def test_options_that_need_a_ray_cluster_are_refused_with_the_alternative(cluster):
    with pytest.raises(ValueError, match="one node"):
        one.options(scheduling_strategy="NODE_AFFINITY")

    class NodeAffinitySchedulingStrategy:  # stands for Ray's: its tasks need a Ray cluster
        pass

    pinned = one.options(scheduling_strategy=NodeAffinitySchedulingStrategy())
    with pytest.raises(ValueError, match=r"one node.*init\(address=\.\.\.\)"):
        pinned.remote(1)
    with pytest.raises(ValueError, match="placement groups"):
        one.options(placement_group="pg")
    with pytest.raises(ValueError, match=r"init\(runtime_env=\.\.\.\)"):
        one.options(runtime_env={"env_vars": {"A": "1"}})
    with pytest.raises(TypeError, match="valid options"):
        one.options(num_cpu=1)
    assert ray.get(one.options(runtime_env={}).remote(1)) == 1


# -- errors of nested tasks --------------------------------------------------------------------

@ray.remote
def bar():
    return 1 / 0


@ray.remote
def foo():
    return ray.get(bar.remote())


def test_an_error_from_a_nested_task_keeps_its_type(cluster):
    with pytest.raises(ZeroDivisionError) as info:
        ray.get(foo.remote())
    assert isinstance(info.value, ray.TaskError)
    text = str(info.value)
    assert "foo failed" in text and "bar failed" in text  # both tracebacks are kept
    assert ", in foo\n" in text and ", in bar\n" in text
    assert isinstance(info.value.cause, ZeroDivisionError)


class QuotaError(Exception):
    def __init__(self, user):
        super().__init__(f"{user} is over quota")
        self.user = user


def test_a_nested_custom_error_keeps_its_class_and_attributes(cluster):
    @ray.remote
    def inner():
        raise QuotaError("ada")

    @ray.remote
    def outer():
        return ray.get(inner.remote())

    @ray.remote
    def outermost():
        return ray.get(outer.remote())

    with pytest.raises(QuotaError) as info:
        ray.get(outermost.remote())
    assert info.value.user == "ada"
    text = str(info.value)
    assert all(f", in {name}\n" in text for name in ("outermost", "outer", "inner"))


# -- small arrays come back aligned ------------------------------------------------------------

SMALL_ARRAYS = [np.arange(3, dtype=np.int8), np.arange(1000, dtype=np.float64),
                np.ones((7, 5), dtype=np.complex64), np.zeros(0), np.array(2.5, dtype=np.float32),
                np.asfortranarray(np.arange(12.0).reshape(3, 4))]


@ray.remote
def alignment(arrays):
    return [(a.ctypes.data % 64, a.flags.writeable) for a in arrays]


@ray.remote
def alignment_of_refs(*arrays):
    return [(a.ctypes.data % 64, a.flags.writeable) for a in arrays]


@pytest.mark.parametrize("array", SMALL_ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
def test_small_arrays_are_64_byte_aligned_in_the_driver(cluster, array):
    assert array.nbytes < 100 * 1024
    back = ray.get(ray.put(array))
    assert back.ctypes.data % 64 == 0 and not back.flags.writeable
    np.testing.assert_array_equal(back, array)
    assert back.dtype == array.dtype and back.flags.f_contiguous == array.flags.f_contiguous
    made = ray.get(one.remote(array))  # a task's result
    assert made.ctypes.data % 64 == 0
    np.testing.assert_array_equal(made, array)


@pytest.mark.local_only("the local store's alignment; Ray aligns as Ray does")
def test_small_arrays_are_64_byte_aligned_in_workers(cluster):
    seen = ray.get(alignment.remote(SMALL_ARRAYS))  # inside the arguments
    assert seen == [(0, False)] * len(SMALL_ARRAYS)
    through_refs = ray.get(alignment_of_refs.remote(*[ray.put(a) for a in SMALL_ARRAYS]))
    assert through_refs == [(0, False)] * len(SMALL_ARRAYS)  # each a resolved ref argument


# -- names Ray users reach for -----------------------------------------------------------------

def test_runtime_context_in_the_driver_and_in_tasks(cluster):
    @ray.remote
    def where():
        context = ray.get_runtime_context()
        return context.get_job_id(), context.get_node_id(), context.get_task_id(), \
            context.get_actor_id()

    context = ray.get_runtime_context()
    job, node = context.get_job_id(), context.get_node_id()
    assert context.get_task_id() is None and context.get_actor_id() is None
    first, second = ray.get([where.remote(), where.remote()])
    assert first[:2] == second[:2] == (job, node)
    assert first[2] and second[2] and first[2] != second[2]  # each task has its own id
    assert first[3] is None


def test_cluster_and_available_resources_and_nodes():
    ray.init(num_cpus=2, resources={"db": 1})

    @ray.remote
    def hold(seconds):
        import time

        time.sleep(seconds)
        return seconds

    assert ray.available_resources()["CPU"] == 2
    running = hold.options(resources={"db": 1}).remote(1.5)
    assert wait_until(lambda: "db" not in ray.available_resources(), timeout=1.0)
    available = ray.available_resources()
    assert available["CPU"] == 1 and "db" not in available  # all in use: left out, as Ray
    assert ray.cluster_resources()["db"] == 1
    assert 0 < available["object_store_memory"] <= ray.cluster_resources()["object_store_memory"]
    (node,) = ray.nodes()
    assert node["Alive"] and node["NodeManagerAddress"] == "127.0.0.1"
    assert node["NodeID"] == ray.get_runtime_context().get_node_id()
    assert node["Resources"]["CPU"] == 2
    assert ray.get(running) == 1.5
    assert ray.util.get_node_ip_address() == "127.0.0.1"
