"""The `@function` decorator, its validated config, and loading apps that contain functions.

```python
from runtime import function

@function(timeout=5.0, retries=2, memory_mb=256, concurrency=1)
def hello(event, ctx):
    return {"greeting": f"hello {event['name']}"}
```

The decorator leaves the handler callable as it was (so it can be unit-tested directly)
and attaches a frozen `FunctionConfig`, validated at once: a bad option fails at import
(deploy) time with `InvalidFunctionConfig(field, value)`, never at the first invocation.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from types import ModuleType
from typing import Any, TypeVar, overload

from runtime import wire
from runtime._errors import InvalidInput

__all__ = [
    "function",
    "FunctionConfig",
    "FunctionSpec",
    "InvalidFunctionConfig",
    "load_apps",
    "import_app",
    "resolve_handler",
]

F = TypeVar("F", bound=Callable[..., Any])

_ATTR = "__stoic_function__"
RETRY_ON = ("error", "crash", "timeout")


class InvalidFunctionConfig(InvalidInput, TypeError):
    """A function's configuration is invalid (your code): names the field and the value.

    Raised at decoration / deploy time. It is an `InvalidInput` (INVALID_ARGUMENT at the
    wire boundary, e.g. for Deploy) and a `TypeError` (as Python raises for an unknown
    keyword argument)."""

    def __init__(self, field: str, value: Any, reason: str = "") -> None:
        why = f": {reason}" if reason else ""
        super().__init__(f"invalid function config {field}={value!r}{why}")
        self.field = field
        self.value = value
        self.reason = reason


@dataclass(frozen=True)
class FunctionConfig:
    """How a function runs. Durations in seconds. Validated on construction.

    - `timeout`: an attempt running longer is killed with its instance (> 0).
    - `retries`: extra attempts of a synchronous invocation after a crash (>= 0).
    - `memory_mb`: address-space limit of each instance's user memory (>= 16).
    - `concurrency`: invocations in flight per instance (>= 1).
    - `min_instances` kept warm (>= 0), spread over at least `min_zones` zones (>= 1).
    - `name`: the function's public name (default: the handler's `__name__`).
    - asynchronous invocations: `max_attempts`, `initial_backoff`, `backoff_multiplier`,
      `max_backoff`, `max_event_age`, `retry_on` (subset of "error", "crash", "timeout"),
      and destinations `on_success` / `on_failure` (function names or None).
    """

    name: str
    timeout: float = 5.0
    retries: int = 2
    memory_mb: int = 256
    concurrency: int = 1
    min_instances: int = 1
    min_zones: int = 2
    max_attempts: int = 3
    initial_backoff: float = 1.0
    backoff_multiplier: float = 2.0
    max_backoff: float = 60.0
    max_event_age: float = 21600.0
    retry_on: tuple[str, ...] = RETRY_ON
    on_success: str | None = None
    on_failure: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or not _valid_name(self.name):
            raise InvalidFunctionConfig(
                "name", self.name, "must be a non-empty identifier-like string ([A-Za-z0-9_.-])"
            )
        for f in ("timeout", "initial_backoff", "max_backoff", "max_event_age"):
            _positive_number(f, getattr(self, f))
        _number(
            "backoff_multiplier", self.backoff_multiplier, lambda v: v >= 1.0, "must be >= 1"
        )
        if self.max_backoff < self.initial_backoff:
            raise InvalidFunctionConfig(
                "max_backoff", self.max_backoff,
                f"must be >= initial_backoff ({self.initial_backoff})",
            )
        _integer("retries", self.retries, 0)
        _integer("memory_mb", self.memory_mb, 16)
        _integer("concurrency", self.concurrency, 1)
        _integer("min_instances", self.min_instances, 0)
        _integer("min_zones", self.min_zones, 1)
        _integer("max_attempts", self.max_attempts, 1)
        retry_on = self.retry_on
        if isinstance(retry_on, str) or not isinstance(retry_on, Sequence):
            raise InvalidFunctionConfig("retry_on", retry_on, f"must be a tuple of {RETRY_ON}")
        for item in retry_on:
            if item not in RETRY_ON:
                raise InvalidFunctionConfig("retry_on", retry_on, f"{item!r} not in {RETRY_ON}")
        object.__setattr__(self, "retry_on", tuple(retry_on))
        for f in ("on_success", "on_failure"):
            v = getattr(self, f)
            if v is not None and (not isinstance(v, str) or not _valid_name(v)):
                raise InvalidFunctionConfig(f, v, "must be a function name or None")


def _valid_name(name: str) -> bool:
    return bool(name) and len(name) <= 128 and all(c.isalnum() or c in "_.-" for c in name)


def _number(field: str, value: Any, ok: Callable[[float], bool], why: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidFunctionConfig(field, value, "must be a number")
    if not math.isfinite(value) or not ok(value):
        raise InvalidFunctionConfig(field, value, why)


def _positive_number(field: str, value: Any) -> None:
    _number(field, value, lambda v: v > 0, "must be > 0")


def _integer(field: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidFunctionConfig(field, value, "must be an integer")
    if value < minimum:
        raise InvalidFunctionConfig(field, value, f"must be >= {minimum}")


_OPTIONS = frozenset(f.name for f in fields(FunctionConfig))


@overload
def function(handler: F, /) -> F: ...


@overload
def function(handler: None = None, /, **options: Any) -> Callable[[F], F]: ...


def function(handler: Any = None, /, **options: Any) -> Any:
    """Mark `handler(event, ctx)` (sync or `async def`) as a Stoic function.

    Usable bare (`@function`) or with options (`@function(timeout=5.0, ...)`, see
    `FunctionConfig`). Returns the handler itself with its config attached. Raises
    `InvalidFunctionConfig` naming an unknown option or an invalid value, or when the
    decorated object is not a function taking (event, ctx)."""
    for key in options:
        if key not in _OPTIONS:
            raise InvalidFunctionConfig(
                key, options[key], f"unknown option (known: {', '.join(sorted(_OPTIONS))})"
            )

    def decorate(fn: Any) -> Any:
        if not callable(fn) or not hasattr(fn, "__name__"):
            raise InvalidFunctionConfig("handler", fn, "must be a function")
        _check_signature(fn)
        name = options.get("name") or fn.__name__
        config = FunctionConfig(**{**options, "name": name})
        setattr(fn, _ATTR, config)
        return fn

    if handler is not None:
        return decorate(handler)
    return decorate


def _check_signature(fn: Any) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        sig.bind(None, None)
    except TypeError as exc:
        raise InvalidFunctionConfig(
            "handler", getattr(fn, "__qualname__", fn), f"must accept (event, ctx): {exc}"
        ) from None


def config_of(obj: Any) -> FunctionConfig | None:
    """The config `@function` attached to `obj`, or None."""
    config = getattr(obj, _ATTR, None)
    return config if isinstance(config, FunctionConfig) else None


@dataclass(frozen=True)
class FunctionSpec:
    """A function found in an app: its config, the app (module name or absolute .py path)
    and the handler's attribute name in that module. Plain data: safe to send to a worker
    process (as JSON, see `to_json`/`from_json`)."""

    config: FunctionConfig
    app: str
    handler_name: str

    @property
    def name(self) -> str:
        return self.config.name

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self.config, f.name) for f in fields(FunctionConfig)}
        data["retry_on"] = list(self.config.retry_on)
        return {"config": data, "app": self.app, "handler_name": self.handler_name}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FunctionSpec:
        """Inverse of `to_json`. Raises InvalidFunctionConfig for bad values."""
        config = dict(data["config"])
        config["retry_on"] = tuple(config.get("retry_on", RETRY_ON))
        unknown = set(config) - _OPTIONS
        if unknown:
            key = sorted(unknown)[0]
            raise InvalidFunctionConfig(key, config[key], "unknown option")
        return cls(FunctionConfig(**config), str(data["app"]), str(data["handler_name"]))

    def to_wire(self) -> wire.FunctionSpec:
        """The wire (Control service) form of this spec."""
        c = self.config
        return wire.FunctionSpec(
            name=c.name, app=self.app, handler=self.handler_name, timeout=c.timeout,
            retries=c.retries, memory_mb=c.memory_mb, concurrency=c.concurrency,
            min_instances=c.min_instances, min_zones=c.min_zones,
            async_retry=wire.RetryPolicy(
                max_attempts=c.max_attempts, initial_backoff=c.initial_backoff,
                backoff_multiplier=c.backoff_multiplier, max_backoff=c.max_backoff,
                max_event_age=c.max_event_age, retry_on=c.retry_on,
            ),
            on_success=c.on_success or "", on_failure=c.on_failure or "",
        )

    @classmethod
    def from_wire(cls, spec: wire.FunctionSpec) -> FunctionSpec:
        """Inverse of `to_wire`. Raises InvalidFunctionConfig for bad values."""
        r = spec.async_retry
        config = FunctionConfig(
            name=spec.name, timeout=spec.timeout, retries=spec.retries,
            memory_mb=spec.memory_mb, concurrency=spec.concurrency,
            min_instances=spec.min_instances, min_zones=spec.min_zones,
            max_attempts=r.max_attempts, initial_backoff=r.initial_backoff,
            backoff_multiplier=r.backoff_multiplier, max_backoff=r.max_backoff,
            max_event_age=r.max_event_age, retry_on=tuple(r.retry_on),
            on_success=spec.on_success or None, on_failure=spec.on_failure or None,
        )
        return cls(config, spec.app, spec.handler)


def _is_path(app: str) -> bool:
    return app.endswith(".py") or os.sep in app


def normalize_app(app: str) -> str:
    """A module name as is; a .py file path made absolute (and checked to exist)."""
    if not app:
        raise InvalidFunctionConfig("app", app, "empty app name")
    if _is_path(app):
        path = os.path.abspath(app)
        if not os.path.isfile(path):
            raise InvalidFunctionConfig("app", app, "no such file")
        return path
    return app


def _module_name_for(path: str) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    digest = hashlib.sha1(path.encode()).hexdigest()[:10]
    safe = "".join(c if c.isalnum() else "_" for c in stem)
    return f"_stoic_app_{safe}_{digest}"


def import_app(app: str) -> ModuleType:
    """Import an app: a module name (`examples.hello`) or a .py file path. Importing the
    same app twice returns the cached module. Exceptions raised by the module propagate
    (the caller reports them); a missing module raises InvalidFunctionConfig."""
    app = normalize_app(app)
    if not _is_path(app):
        try:
            return importlib.import_module(app)
        except ModuleNotFoundError as exc:
            if exc.name and app.startswith(exc.name):
                raise InvalidFunctionConfig("app", app, f"no module named {exc.name!r}") from exc
            raise
    name = _module_name_for(app)
    cached = sys.modules.get(name)
    if cached is not None:
        return cached
    spec = importlib.util.spec_from_file_location(name, app)
    if spec is None or spec.loader is None:
        raise InvalidFunctionConfig("app", app, "cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def load_apps(apps: Sequence[str]) -> dict[str, FunctionSpec]:
    """Import each app and collect the functions decorated in it, keyed by function name.

    Apps are module names or .py file paths (resolved to absolute paths in the specs).
    Raises InvalidFunctionConfig when two functions share a name (naming both apps), when
    an app does not exist or defines no function; exceptions raised while importing an
    app's module propagate."""
    if isinstance(apps, str):
        raise InvalidFunctionConfig("apps", apps, "must be a sequence of app names, not a str")
    found: dict[str, FunctionSpec] = {}
    for raw in apps:
        app = normalize_app(raw)
        module = import_app(app)
        count = 0
        for attr, obj in vars(module).items():
            config = config_of(obj)
            if config is None or getattr(obj, "__module__", None) != module.__name__:
                continue  # not decorated, or imported from another module
            count += 1
            other = found.get(config.name)
            if other is not None:
                raise InvalidFunctionConfig(
                    "name", config.name,
                    f"defined twice: {other.app}:{other.handler_name} and {app}:{attr}",
                )
            found[config.name] = FunctionSpec(config, app, attr)
        if count == 0:
            raise InvalidFunctionConfig("app", raw, "defines no @function")
    return found


def resolve_handler(spec: FunctionSpec) -> Callable[..., Any]:
    """Import `spec.app` and return its handler. Raises InvalidFunctionConfig if the
    handler is missing or no longer decorated; import errors propagate."""
    module = import_app(spec.app)
    handler = getattr(module, spec.handler_name, None)
    if handler is None or config_of(handler) is None:
        raise InvalidFunctionConfig(
            "handler", f"{spec.app}:{spec.handler_name}", "not found or not a @function"
        )
    return handler
