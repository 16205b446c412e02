"""The model report counts what the paper's table reports."""

from __future__ import annotations

import pytest

from focalbench.models.summary import DEFAULT, count, main
from focalbench.models.variants import VARIANTS


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", DEFAULT)
def test_params_and_flops_match_the_paper(name):
    got, paper = count(name), VARIANTS[name].paper
    assert round(got["params_m"], 1) == paper["params_m"]
    # MACs of convolutions and matmuls only; the paper's figures are within 1 % of that count
    assert got["gmacs"] == pytest.approx(paper["gflops"], rel=0.01)


def test_cli_prints_the_table(capsys):
    main(["focalnet_tiny_srf", "--input-size", "384"])
    out = capsys.readouterr().out
    assert "GFLOPs = multiply-accumulates / 1e9" in out.splitlines()[0]  # the unit is stated, not guessed
    assert "focalnet_tiny_srf" in out and "  384 " in out and "28.43" in out
