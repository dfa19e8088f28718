"""model.attn_implementation: auto picks flash-attn only where it imports and the dtype is half
precision; asked for explicitly where it cannot run, the error names the key, the reason and the fix.

A fake flash_attn package on sys.path stands in for the two cases a CPU machine can build: a wheel
built for another torch (its import fails with an undefined symbol) and one that imports.
"""

import pytest

from grpo.runtime.config import ConfigError
from grpo.runtime.model import resolve_attention

BROKEN_BUILDS = {
    # what a flash-attn wheel built for torch 2.8 raises when imported under another torch
    "undefined-symbol": "raise ImportError('flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEa')",
    "half-installed": "raise ModuleNotFoundError('No module named flash_attn_2_cuda')",
    "missing-library": "raise OSError('libcudart.so.12: cannot open shared object file')",
    "abi-check": "raise RuntimeError('flash_attn was compiled against torch 2.8.0')",
}


@pytest.fixture
def flash_attn_package(tmp_path, monkeypatch):
    """Install a fake flash_attn whose __init__ runs the given source."""
    def install(source: str):
        package = tmp_path / "flash_attn"
        package.mkdir()
        (package / "__init__.py").write_text(source + "\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.delitem(__import__("sys").modules, "flash_attn", raising=False)
    return install


@pytest.mark.parametrize("source", [pytest.param(s, id=name) for name, s in BROKEN_BUILDS.items()])
def test_auto_falls_back_to_sdpa_when_flash_attn_is_broken(flash_attn_package, source):
    flash_attn_package(source)
    assert resolve_attention("auto", cuda=True, dtype="bfloat16") == "sdpa"


@pytest.mark.parametrize("source", [pytest.param(s, id=name) for name, s in BROKEN_BUILDS.items()])
def test_asking_for_a_broken_flash_attn_names_the_key_the_reason_and_the_fix(flash_attn_package, source):
    flash_attn_package(source)
    with pytest.raises(ConfigError) as error:
        resolve_attention("flash_attention_2", cuda=True, dtype="bfloat16")
    message = str(error.value)
    assert "model.attn_implementation=flash_attention_2" in message
    assert "does not import" in message and source.split("'")[1] in message  # the reason, verbatim
    assert "set model.attn_implementation=sdpa" in message  # the fix


@pytest.mark.parametrize("cuda, dtype, expected", [
    pytest.param(True, "bfloat16", "flash_attention_2", id="cuda-bfloat16"),
    pytest.param(True, "float16", "flash_attention_2", id="cuda-float16"),
    pytest.param(True, "float32", "sdpa", id="cuda-float32"),  # flash-attn has no float32 kernels
    pytest.param(False, "bfloat16", "sdpa", id="cpu"),
])
def test_auto_picks_a_working_flash_attn_only_on_cuda_in_half_precision(flash_attn_package, cuda, dtype, expected):
    flash_attn_package("__version__ = '2.8.3'")
    assert resolve_attention("auto", cuda=cuda, dtype=dtype) == expected


@pytest.mark.parametrize("cuda, dtype, reason", [
    pytest.param(True, "float32", "model.dtype is float32", id="float32"),
    pytest.param(False, "bfloat16", "needs a CUDA GPU", id="cpu"),
])
def test_asking_for_flash_attn_where_it_cannot_run_is_an_error(flash_attn_package, cuda, dtype, reason):
    flash_attn_package("__version__ = '2.8.3'")
    with pytest.raises(ConfigError, match=reason):
        resolve_attention("flash_attention_2", cuda=cuda, dtype=dtype)


@pytest.mark.parametrize("choice", ["sdpa", "eager"])
def test_other_choices_are_kept(choice):
    assert resolve_attention(choice, cuda=True, dtype="float32") == choice
