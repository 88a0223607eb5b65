"""Each package's `__all__` is true: every name exists, and nothing private leaks."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("package", ["runtime", "supervisor"])
def test_all_names_exist(package: str) -> None:
    module = importlib.import_module(package)
    names = module.__all__
    assert len(names) == len(set(names)), "duplicate names in __all__"
    missing = [name for name in names if not hasattr(module, name)]
    assert missing == []
    assert not [name for name in names if name.startswith("_")]


def test_star_imports() -> None:
    for package in ("runtime", "supervisor"):
        namespace: dict[str, object] = {}
        exec(f"from {package} import *", namespace)  # noqa: S102 - checking __all__ itself
        module = importlib.import_module(package)
        assert set(module.__all__) <= set(namespace)


def test_actor_and_supervision_api_is_exported() -> None:
    import runtime
    import supervisor

    for name in ("Actor", "ActorRef", "ActorDeadError", "MailboxFull", "Runtime", "Exit", "Down"):
        assert name in runtime.__all__
    for name in (
        "Supervisor",
        "SupervisorSpec",
        "ChildSpec",
        "Restart",
        "RestartStrategy",
        "RestartIntensity",
        "Report",
        "InvalidChildSpec",
        "BRUTAL_KILL",
        "should_restart",
        "record_restart",
        "affected_children",
    ):
        assert name in supervisor.__all__
