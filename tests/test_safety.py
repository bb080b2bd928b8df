"""Safety rules over the whole repository (issue 8): torch.load only with weights_only=True, no shell
strings (subprocess with argument lists, never shell=True, os.system or os.popen), and the Prefect
server bound to 127.0.0.1 unless the caller asks for another address.

The two scans read the source with `ast`, so a rule mentioned in a comment or docstring does not
count, and each is first shown to catch a planted violation."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".venv", ".venv-bench", "runs", ".git", ".tools", "node_modules", "__pycache__"}


def python_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if not SKIP_DIRS & set(p.relative_to(ROOT).parts))


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def unsafe_torch_loads(source: str) -> list[int]:
    """Lines calling torch.load (or a bare `load` imported from torch) without weights_only=True."""
    tree = ast.parse(source)
    bare = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and node.module in ("torch", "torch.serialization") for alias in node.names if alias.name == "load"}
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in ("torch.load", "torch.serialization.load") or name in bare:
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            if not safe:
                lines.append(node.lineno)
    return lines


SUBPROCESS_CALLS = {"subprocess.run", "subprocess.Popen", "subprocess.call", "subprocess.check_call",
                    "subprocess.check_output"}
SHELL_CALLS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput", "os.spawnl", "os.spawnlp"}


def shell_strings(source: str) -> list[int]:
    """Lines that hand a shell a command string: shell=True (anything but a literal False),
    os.system/os.popen/getoutput, or a subprocess call whose command is a string."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in SHELL_CALLS:
            lines.append(node.lineno)
        elif any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                 for k in node.keywords):
            lines.append(node.lineno)
        elif name in SUBPROCESS_CALLS and node.args and _is_string(node.args[0]):
            lines.append(node.lineno)
    return lines


def _is_string(node: ast.AST) -> bool:
    """A str literal, an f-string, "..." + x, "..." % x or "...".format(x) (a list + list is not)."""
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        return _is_string(node.left) or _is_string(node.right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("format", "join"):
        return _is_string(node.func.value)
    return False


PLANTED = '''
import subprocess, os, torch
from torch import load as tl
state = torch.load(path)
state = torch.load(path, weights_only=False)
state = tl(path)
ok = torch.load(path, map_location="cpu", weights_only=True)
subprocess.run(f"tar xf {name}", shell=True)
subprocess.run("ls " + folder)
os.system("rm -rf " + folder)
subprocess.run(["tar", "xf", name])
subprocess.run(base + ["--out", folder])
subprocess.check_output(" ".join(["ls", folder]))
'''


def test_the_scans_catch_planted_violations():
    assert unsafe_torch_loads(PLANTED) == [4, 5, 6]
    assert shell_strings(PLANTED) == [8, 9, 10, 13]


@pytest.mark.parametrize("check", [unsafe_torch_loads, shell_strings], ids=["torch.load", "shell"])
def test_repository_has_none(check):
    files = python_files()
    assert len(files) > 50  # the scan sees the repository (pipeline, model, flows, tests, bench, scripts)
    found = {str(p.relative_to(ROOT)): lines for p in files if (lines := check(p.read_text()))}
    assert found == {}, f"{check.__name__}: {found}"


class _FakePopen:
    calls: list[list[str]] = []

    def __init__(self, cmd, **kwargs):
        _FakePopen.calls.append(cmd)
        self.pid = 99999999
        self.returncode = None

    def poll(self):
        return None


def _started_command(monkeypatch, tmp_path, **kwargs) -> list[str]:
    from flows import server

    answers = iter([False, True])  # no server yet, then the one "started" answers
    monkeypatch.setattr(server, "is_healthy", lambda url, timeout=2.0: next(answers))
    monkeypatch.setattr(server.subprocess, "Popen", _FakePopen)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    _FakePopen.calls.clear()
    url = server.ensure_server(tmp_path / "prefect", **kwargs)
    (cmd,) = _FakePopen.calls
    assert isinstance(cmd, list)  # an argument list, no shell
    return cmd, url


def test_prefect_server_binds_localhost_by_default(monkeypatch, tmp_path):
    cmd, url = _started_command(monkeypatch, tmp_path)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert url.startswith("http://127.0.0.1:")


def test_prefect_server_host_only_when_configured(monkeypatch, tmp_path):
    cmd, url = _started_command(monkeypatch, tmp_path, host="0.0.0.0", port=4321)
    assert cmd[cmd.index("--host") + 1 :][:3] == ["0.0.0.0", "--port", "4321"]
