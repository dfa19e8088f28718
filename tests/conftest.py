import pytest

from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama")))


@pytest.fixture(scope="session")
def tiny_model_dir_128(tmp_path_factory):
    """The tiny Llama with hidden size 128: bitsandbytes' 4-bit layers need blocks of 64 on CPU."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny-llama-128"), hidden_size=128))
