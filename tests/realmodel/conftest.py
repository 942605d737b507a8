import pytest

import decodekit


@pytest.fixture(scope="session")
def default_model_fp32():
    """SmolLM2-135M-Instruct in float32 (converted from the wheel's GGUF once, then cached on disk)."""
    return decodekit.models.load_default("float32")
