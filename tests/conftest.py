import os
import shutil
import tempfile

from hypothesis import settings

# Profiles `dev` and `ci` come from decodekit's pytest plugin; `make test` selects ci.
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

_COSTS_BEFORE: list[str | None] = []


def pytest_configure(config):
    """The forward cost curves that the suite's decodes measure go to a folder of this run's own, not
    to the user's cache (where a later decode or bench would read a curve measured under the suite's
    load). Subprocesses inherit it, so one run measures each (model, dtype, threads) once."""
    _COSTS_BEFORE.append(os.environ.get("DECODEKIT_COSTS"))
    os.environ["DECODEKIT_COSTS"] = tempfile.mkdtemp(prefix="decodekit-test-costs-")


def pytest_unconfigure(config):
    shutil.rmtree(os.environ["DECODEKIT_COSTS"], ignore_errors=True)
    before = _COSTS_BEFORE.pop()
    if before is None:
        os.environ.pop("DECODEKIT_COSTS", None)
    else:
        os.environ["DECODEKIT_COSTS"] = before
