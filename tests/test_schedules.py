import math

import pytest
import torch

from segkit.training.schedules import cosine, poly


def lrs(make, steps, **kwargs):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make(opt, total_steps=steps, **kwargs)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_poly_without_warmup_follows_the_formula():
    values = lrs(poly, 10, power=0.9)
    assert values == pytest.approx([(1 - t / 10) ** 0.9 for t in range(10)])


def test_warmup_rises_linearly_then_decays():
    values = lrs(poly, 20, power=1.0, warmup_steps=5, warmup_start=0.2)
    assert values[:5] == pytest.approx([0.2, 0.36, 0.52, 0.68, 0.84])
    assert values[5] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(1 / 15)
    assert all(a >= b for a, b in zip(values[5:], values[6:]))


def test_cosine_reaches_min_lr():
    values = lrs(cosine, 12, min_lr=0.1, warmup_steps=2)
    assert values[2] == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi * 9 / 10)) / 2)
