import os

from hypothesis import settings

# Profiles `dev` and `ci` come from decodekit's pytest plugin; `make test` selects ci.
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
