"""Checks of the NumPy reference itself, so the other tests rest on a tested oracle.

These do not import lstmx: the reference is compared with torch.nn.LSTM
(peephole=False) and with a step computed by hand from DESIGN.md section 1.
"""

import math

import numpy as np
import pytest

from helpers import padding_mask, torch_modules_from_params, torch_run
from reference import random_params, reference_forward


def _sigma(z):
    return 1.0 / (1.0 + math.exp(-z))


def test_peephole_cell_by_hand():
    """H = I = 1, two steps: i, f see c_{t-1}; o sees c_t."""
    p = {"W_i_x": 0.3, "W_f_x": -0.2, "W_c_x": 0.5, "W_o_x": 0.7,
         "W_i_h": 0.1, "W_f_h": 0.4, "W_c_h": -0.6, "W_o_h": 0.2,
         "b_i": 0.05, "b_f": -0.1, "b_c": 0.2, "b_o": 0.3,
         "p_i": 0.9, "p_f": -0.8, "p_o": 1.3}
    params = {}
    for g in "ifco":
        params[f"W_{g}_x_fw_layer1"] = np.array([[p[f"W_{g}_x"]]])
        params[f"W_{g}_h_fw_layer1"] = np.array([[p[f"W_{g}_h"]]])
        params[f"b_{g}_fw_layer1"] = np.array([[p[f"b_{g}"]]])
    for g in "ifo":
        params[f"peephole_{g}_c_fw_layer1"] = np.array([[p[f"p_{g}"]]])
    xs = [0.8, -1.1]
    h, c = 0.25, -0.4
    hs = []
    for x in xs:
        i = _sigma(p["W_i_x"] * x + p["W_i_h"] * h + p["p_i"] * c + p["b_i"])
        f = _sigma(p["W_f_x"] * x + p["W_f_h"] * h + p["p_f"] * c + p["b_f"])
        g = math.tanh(p["W_c_x"] * x + p["W_c_h"] * h + p["b_c"])
        c = f * c + i * g
        o = _sigma(p["W_o_x"] * x + p["W_o_h"] * h + p["p_o"] * c + p["b_o"])
        h = o * math.tanh(c)
        hs.append(h)
    y, (h_n, c_n) = reference_forward(
        params, np.array(xs).reshape(2, 1, 1), num_layers=1, bidirectional=False,
        peephole=True, has_head=False, h0=np.full((1, 1, 1), 0.25), c0=np.full((1, 1, 1), -0.4))
    np.testing.assert_allclose(y.ravel(), hs, rtol=0, atol=1e-15)
    assert h_n.item() == pytest.approx(h, abs=1e-15)
    assert c_n.item() == pytest.approx(c, abs=1e-15)


def test_zero_peepholes_equal_no_peepholes():
    rng = np.random.default_rng(1)
    params = random_params(rng, 3, 4, num_layers=2, bidirectional=True, peephole=True)
    x = rng.standard_normal((5, 2, 3))
    with_peep, _ = reference_forward(params, x, num_layers=2, bidirectional=True,
                                     peephole=True, has_head=False)
    for name in params:
        if name.startswith("peephole_"):
            params[name][...] = 0.0
    zeroed, _ = reference_forward(params, x, num_layers=2, bidirectional=True,
                                  peephole=True, has_head=False)
    without, _ = reference_forward(params, x, num_layers=2, bidirectional=True,
                                   peephole=False, has_head=False)
    assert not np.allclose(with_peep, without)
    np.testing.assert_array_equal(zeroed, without)


@pytest.mark.parametrize("num_layers", [1, 2], ids=["L1", "L2"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("output_size", [None, 3], ids=["nohead", "head"])
@pytest.mark.parametrize("use_lengths", [False, True], ids=["full", "lengths"])
def test_reference_matches_torch(num_layers, bidirectional, output_size, use_lengths):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    I, H, T, N = 3, 4, 6, 4
    D = 2 if bidirectional else 1
    params = random_params(rng, I, H, num_layers, bidirectional, peephole=False,
                           output_size=output_size)
    x = rng.standard_normal((T, N, I))
    h0 = rng.standard_normal((num_layers * D, N, H))
    c0 = rng.standard_normal((num_layers * D, N, H))
    lengths = np.array([3, 6, 1, 5]) if use_lengths else None
    y, (h_n, c_n) = reference_forward(params, x, num_layers=num_layers,
                                      bidirectional=bidirectional, peephole=False,
                                      has_head=output_size is not None,
                                      lengths=lengths, h0=h0, c0=c0)
    lstm, head = torch_modules_from_params(
        params, input_size=I, hidden_size=H, num_layers=num_layers,
        bidirectional=bidirectional, output_size=output_size, bias_split_rng=rng)
    with torch.no_grad():
        ty, th, tc, *_ = torch_run(lstm, head, x, lengths, h0, c0)
    np.testing.assert_allclose(y, ty.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(h_n, th.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(c_n, tc.numpy(), rtol=0, atol=1e-12)
    if use_lengths:
        assert np.all(y[~padding_mask(lengths, T)] == 0.0)
