"""Import cost: the package, the command line and the scoring modules load no model code (DESIGN §7)."""

import subprocess
import sys
import time

import pytest

HEAVY = ("torch", "transformers")


def _loaded_after(code: str) -> list[str]:
    """The heavy modules in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return out.stdout.split()


@pytest.mark.parametrize("code", [
    "import futuremask",
    "import futuremask.eval.scoring",
    "import futuremask.eval.report",
    "import futuremask.merge_spec",
    "from futuremask.cli import build_parser; build_parser()",
    "import futuremask as fm; fm.POLICIES; fm.__all__",
])
def test_light_imports_load_no_torch_or_transformers(code):
    assert _loaded_after(code) == []


def test_the_probe_sees_torch_when_it_is_loaded():
    """The probe above can fail: touching a model-side name does load torch."""
    assert "torch" in _loaded_after("import futuremask as fm; fm.TokenLayout")


def test_help_is_fast():
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "futuremask.cli", "--help"], capture_output=True, check=True)
    assert time.perf_counter() - start < 3.0  # ~0.3 s; the old eager imports took ~7 s


def test_public_names_resolve_and_stay_live():
    import futuremask as fm
    import futuremask.attention  # noqa: F401  (the submodule must not hide the function)
    from futuremask import hf, policies

    assert callable(fm.attention) and fm.attention.__module__ == "futuremask.attention"
    for name in fm.__all__:
        assert getattr(fm, name) is not None
    assert fm.apply is hf.apply and fm.Handle is fm.FutureMask
    assert fm.POLICIES == policies.policy_names()

    @fm.register_policy("_test_live_policy")
    def _live(lay, b, q, kv):
        """nothing extra"""
        return q < 0

    try:
        assert "_test_live_policy" in fm.POLICIES
    finally:
        del policies._REGISTRY["_test_live_policy"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        fm.nope  # noqa: B018


def test_cli_names_match_their_registries():
    """names.py lists, torch-free, what the CLI offers; each list equals the registry it stands for."""
    from futuremask import names
    from futuremask.eval import milebench_style, prompt_styles

    assert tuple(prompt_styles.STYLES) == names.PROMPT_STYLES
    assert milebench_style.IMAGE_ASPECTS == names.IMAGE_ASPECTS
