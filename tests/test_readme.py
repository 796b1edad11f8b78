"""The README's example of the losses in your own code runs as printed, with the values its
comment states."""

import os
import re

import numpy as np

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_the_losses_example_runs_and_gives_what_it_says():
    with open(README) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    (code,) = [b for b in blocks if "from align_jax.losses import" in b]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102
    np.testing.assert_allclose(scope["losses"], [25.0, 25.0])  # IPO at ρ = 0, β = 0.1
    # dr_grpo on-policy: −Σ A_i·n_i / (rows · T) with A = [1, −1, 0, 0], equal lengths
    assert float(scope["loss"]) == 0.0
    assert float(scope["den"]) == 4 * 6
