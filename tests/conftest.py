"""Shared test settings: where the real-data samples live (../shared/realdata beside the repo)."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("LLAMA_RECIPE_REALDATA", REPO.parent / "shared" / "realdata"))
