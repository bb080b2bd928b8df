"""Shared test settings: where the real-data samples live (../shared/realdata beside the repo)."""

import os
from pathlib import Path

# setuptools first: it puts its own distutils in place while that is still possible. Imported later
# (torch.compile's inductor imports it) after something in the suite had loaded the stdlib's distutils,
# its check failed ("AssertionError: .../distutils/core.py") in the full suite, not alone.
import setuptools  # noqa: F401, E402

REPO = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("LLAMA_RECIPE_REALDATA", REPO.parent / "shared" / "realdata"))
