"""The @function decorator, its config validation, load_apps and the handler Context."""

from __future__ import annotations

import logging
import math
import os
import textwrap
from pathlib import Path

import pytest

import runtime
from runtime import (
    Context,
    FunctionConfig,
    FunctionSpec,
    InvalidFunctionConfig,
    InvalidInput,
    function,
    load_apps,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_bare_decorator_keeps_the_handler_and_attaches_defaults() -> None:
    @function
    def f(event: object, ctx: object) -> object:
        return event

    assert f(1, None) == 1
    config = f.__stoic_function__  # type: ignore[attr-defined]
    assert config == FunctionConfig(name="f")
    assert (config.timeout, config.retries, config.memory_mb, config.concurrency) == (5.0, 2, 256, 1)
    assert (config.min_instances, config.min_zones, config.retry_on) == (
        1, 2, ("error", "crash", "timeout"))


def test_decorator_with_options_and_name() -> None:
    @function(timeout=1.5, retries=0, memory_mb=64, concurrency=3, name="renamed")
    async def g(event: object, ctx: object) -> None:
        return None

    config = g.__stoic_function__  # type: ignore[attr-defined]
    assert (config.name, config.timeout, config.retries, config.memory_mb, config.concurrency) == (
        "renamed", 1.5, 0, 64, 3)


def test_unknown_option_names_it() -> None:
    with pytest.raises(InvalidFunctionConfig) as info:
        function(timout=3)
    assert info.value.field == "timout"
    assert "unknown option" in str(info.value)
    assert isinstance(info.value, TypeError) and isinstance(info.value, InvalidInput)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeout", -1.0), ("timeout", 0), ("timeout", math.inf), ("timeout", "5"),
        ("retries", -1), ("retries", 1.5), ("memory_mb", 0), ("concurrency", 0),
        ("concurrency", True), ("min_instances", -1), ("min_zones", 0), ("max_attempts", 0),
        ("initial_backoff", 0.0), ("backoff_multiplier", 0.5), ("max_backoff", 0.1),
        ("max_event_age", -5), ("retry_on", ("error", "oops")), ("retry_on", "error"),
        ("on_success", ""), ("name", "has space"),
    ],
)
def test_invalid_values_name_field_and_value(field: str, value: object) -> None:
    with pytest.raises(InvalidFunctionConfig) as info:

        @function(**{field: value})
        def h(event: object, ctx: object) -> None: ...

    assert info.value.field == field
    assert info.value.value == value
    assert field in str(info.value)


def test_handler_must_take_event_and_ctx() -> None:
    with pytest.raises(InvalidFunctionConfig) as info:

        @function
        def no_args() -> None: ...

    assert info.value.field == "handler"


def test_config_is_frozen() -> None:
    config = FunctionConfig(name="x")
    with pytest.raises(AttributeError):
        config.timeout = 3.0  # type: ignore[misc]


def _write(path: Path, body: str) -> str:
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_load_apps_by_path_and_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    specs = load_apps([str(EXAMPLES / "hello.py"), str(EXAMPLES / "faulty.py")])
    assert {"hello", "echo", "whoami", "boom", "crash", "segfault", "hang", "hog",
            "flaky"} <= set(specs)
    assert "broken_import" not in specs
    hello = specs["hello"]
    assert hello.app == str(EXAMPLES / "hello.py") and os.path.isabs(hello.app)
    assert hello.handler_name == "hello" and hello.name == "hello"
    assert specs["hang"].config.timeout == 1.0
    assert specs["hog"].config.memory_mb == 64

    monkeypatch.chdir(tmp_path)
    rel = load_apps(["../" + tmp_path.name + "/" + Path(_write(tmp_path / "rel_app.py", """
        from runtime import function
        @function
        def rel(event, ctx):
            return 1
    """)).name])
    assert rel["rel"].app == str(tmp_path / "rel_app.py")

    pkg = tmp_path / "stoic_test_mod_app.py"
    _write(pkg, """
        from runtime import function
        from runtime._function import function as again

        @function(name="mod-fn")
        def handler(event, ctx):
            return event
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = load_apps(["stoic_test_mod_app"])
    assert mod["mod-fn"].app == "stoic_test_mod_app"
    assert mod["mod-fn"].handler_name == "handler"


def test_imported_functions_are_not_collected_twice(tmp_path: Path) -> None:
    a = _write(tmp_path / "app_a.py", """
        from runtime import function
        @function
        def shared(event, ctx):
            return 1
    """)
    b = _write(tmp_path / "app_b.py", f"""
        import importlib.util, sys
        from runtime._function import import_app
        shared = import_app({a!r}).shared
        from runtime import function
        @function
        def own(event, ctx):
            return 2
    """)
    specs = load_apps([a, b])
    assert set(specs) == {"shared", "own"}
    assert specs["shared"].app == a


def test_name_clash_names_both_apps(tmp_path: Path) -> None:
    body = """
        from runtime import function
        @function(name="same")
        def f(event, ctx):
            return 1
    """
    a = _write(tmp_path / "clash_a.py", body)
    b = _write(tmp_path / "clash_b.py", body)
    with pytest.raises(InvalidFunctionConfig) as info:
        load_apps([a, b])
    assert info.value.field == "name" and info.value.value == "same"
    assert a in str(info.value) and b in str(info.value)


def test_bad_apps(tmp_path: Path) -> None:
    with pytest.raises(InvalidFunctionConfig, match="no such file"):
        load_apps([str(tmp_path / "missing.py")])
    with pytest.raises(InvalidFunctionConfig, match="no module named"):
        load_apps(["stoic_no_such_module_xyz"])
    empty = _write(tmp_path / "empty_app.py", "x = 1\n")
    with pytest.raises(InvalidFunctionConfig, match="defines no @function"):
        load_apps([empty])
    with pytest.raises(RuntimeError, match="on purpose"):
        load_apps([str(EXAMPLES / "broken.py")])
    with pytest.raises(InvalidFunctionConfig):
        load_apps(str(EXAMPLES / "hello.py"))  # a str, not a sequence of apps


def test_spec_round_trips_through_json_and_wire() -> None:
    spec = load_apps([str(EXAMPLES / "faulty.py")])["hog"]
    assert FunctionSpec.from_json(spec.to_json()) == spec
    assert FunctionSpec.from_wire(spec.to_wire()) == spec
    wire_spec = spec.to_wire()
    assert (wire_spec.name, wire_spec.handler, wire_spec.memory_mb) == ("hog", "hog", 64)


def test_context_remaining_time_and_fields() -> None:
    now = [1000.0]
    ctx = Context(invocation_id="inv", attempt=2, function="f", node_id="n1", zone="a",
                  deadline=1002.5, trace_context={"traceparent": "x"}, clock=lambda: now[0])
    assert ctx.remaining_time() == 2.5
    now[0] = 1010.0
    assert ctx.remaining_time() == 0.0
    assert Context(invocation_id="i", attempt=1, function="f").remaining_time() == math.inf
    assert ctx.state is None and ctx.trace_context == {"traceparent": "x"}
    assert "inv" in repr(ctx)


def test_context_logger_carries_invocation_fields(caplog: pytest.LogCaptureFixture) -> None:
    ctx = Context(invocation_id="inv-7", attempt=3, function="hello", node_id="n1", zone="b")
    with caplog.at_level(logging.INFO, logger="stoic.function.hello"):
        ctx.logger.info("hi %s", "there")
    assert isinstance(ctx.logger, logging.Logger)
    (record,) = [r for r in caplog.records if r.getMessage() == "hi there"]
    fields = ("invocation_id", "attempt", "function", "node_id", "zone")
    assert [getattr(record, f) for f in fields] == ["inv-7", 3, "hello", "n1", "b"]
    assert ctx.logger is ctx.logger


def test_public_api_is_exported() -> None:
    for name in ("function", "FunctionConfig", "FunctionSpec", "InvalidFunctionConfig",
                 "load_apps", "Context", "ForkServer", "WorkerProcess", "WorkerStartFailed"):
        assert name in runtime.__all__
        assert getattr(runtime, name) is not None
