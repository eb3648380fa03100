"""The package's public API: lazy names, and functions that share their module's name."""

import subprocess
import sys

import numpy as np


def test_public_names_resolve():
    import blackholes

    for name in blackholes.__all__:
        assert getattr(blackholes, name) is not None, name


def test_scan_and_train_callable_after_importing_their_modules(tmp_path):
    # ``import blackholes.analysis.groups`` / ``blackholes.train`` rebinds the package attribute to
    # the module; calling it must still reach the function.
    import blackholes
    import blackholes.analysis.groups
    import blackholes.training.loop

    assert [g.size for g in blackholes.scan(np.zeros((4, 3), np.float32)).groups] == [4]
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(b"abcabcabc" * 20)
    config = blackholes.TrainConfig(corpus=str(corpus), steps=2, context=8, compile=False)
    result = blackholes.train(config, tmp_path / "run.safetensors", progress=False)
    assert result.steps_done == 2 and result.path.exists()


def test_import_is_light():
    code = "import blackholes, sys; print(sorted(m for m in ('torch', 'matplotlib', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_reproduce_help_states_the_real_default_steps(capsys):
    import pytest

    from blackholes.cli import main
    from blackholes.pipelines.reproduce import DEFAULT_STEPS

    with pytest.raises(SystemExit):
        main(["reproduce", "--help"])
    assert f"default {DEFAULT_STEPS:,}" in " ".join(capsys.readouterr().out.split())
