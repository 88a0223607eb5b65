"""The committed generated code in runtime/_proto must be what `make proto` produces from
proto/stoic/v1/*.proto (same generator, same import rewrite)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"
COMMITTED = ROOT / "runtime" / "_proto" / "stoic" / "v1"


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    protoc = pytest.importorskip("grpc_tools.protoc")
    sources = sorted(str(p.relative_to(PROTO)) for p in (PROTO / "stoic" / "v1").glob("*.proto"))
    assert sources, "no .proto files found"
    rc = protoc.main([
        "grpc_tools.protoc", f"-I{PROTO}", f"--python_out={tmp_path}",
        f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}",
        *[str(PROTO / s) for s in sources],
    ])
    assert rc == 0, "protoc failed"
    fresh_dir = tmp_path / "stoic" / "v1"
    # the Makefile's sed rewrite
    rewrite = re.compile(r"^from stoic\.v1 import", re.MULTILINE)
    fresh = {
        p.name: rewrite.sub("from runtime._proto.stoic.v1 import", p.read_text())
        for p in fresh_dir.iterdir() if p.suffix in (".py", ".pyi")
    }
    committed = {
        p.name: p.read_text()
        for p in COMMITTED.iterdir() if p.suffix in (".py", ".pyi") and p.name != "__init__.py"
    }
    assert sorted(committed) == sorted(fresh), "generated file set differs: run `make proto`"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated code {stale}: run `make proto` and commit"
