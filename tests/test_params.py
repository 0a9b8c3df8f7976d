"""Parameters: seed-000 names and shapes, zero-copy views into one flat buffer, init."""

import re
from pathlib import Path

import numpy as np
import pytest

import lstmx
from helpers import Arch, random_x
from reference import parameter_shapes

# The seed documents live in shared/seeds beside the checkout, where present.
SEED_DIR = Path(__file__).resolve().parents[2] / "shared" / "seeds"

# Seed 000's parameter list (copied from seeds/000_a257d66fb37e464b.txt, so the
# test also runs where that folder is absent): 2-layer bidirectional peephole
# LSTM, input 360, hidden 320, head 640 -> 44.
SEED_000 = {
    "W_o_x_fw_layer1": (320, 360), "W_o_x_fw_layer2": (320, 640),
    "W_i_h_bw_layer2": (320, 320), "W_i_h_bw_layer1": (320, 320),
    "b_c_fw_layer1": (1, 320), "b_c_fw_layer2": (1, 320), "b_o_fw_layer1": (1, 320),
    "W_c_x_fw_layer2": (320, 640), "b_o_fw_layer2": (1, 320),
    "W_f_h_fw_layer2": (320, 320), "W_i_h_fw_layer2": (320, 320),
    "W_i_h_fw_layer1": (320, 320), "W_f_h_fw_layer1": (320, 320),
    "W_i_x_bw_layer2": (320, 640), "W_i_x_bw_layer1": (320, 360),
    "W_o_h_fw_layer1": (320, 320), "W_f_x_fw_layer2": (320, 640),
    "W_i_x_fw_layer2": (320, 640), "W_i_x_fw_layer1": (320, 360),
    "W_f_x_fw_layer1": (320, 360), "W_c_x_bw_layer1": (320, 360),
    "W_c_x_bw_layer2": (320, 640), "Fully_connected_layerweights": (44, 640),
    "W_f_x_bw_layer2": (320, 640), "W_f_x_bw_layer1": (320, 360),
    "W_c_x_fw_layer1": (320, 360), "peephole_o_c_fw_layer1": (1, 320),
    "W_c_h_bw_layer1": (320, 320), "peephole_o_c_fw_layer2": (1, 320),
    "W_o_h_fw_layer2": (320, 320), "Fully_connected_layerbiases": (1, 44),
    "W_c_h_fw_layer1": (320, 320), "W_c_h_fw_layer2": (320, 320),
    "b_c_bw_layer1": (1, 320), "peephole_f_c_bw_layer2": (1, 320),
    "peephole_f_c_bw_layer1": (1, 320), "b_c_bw_layer2": (1, 320),
    "W_o_x_bw_layer1": (320, 360), "peephole_f_c_fw_layer2": (1, 320),
    "peephole_f_c_fw_layer1": (1, 320), "W_o_x_bw_layer2": (320, 640),
    "b_o_bw_layer1": (1, 320), "b_o_bw_layer2": (1, 320), "b_i_fw_layer1": (1, 320),
    "W_f_h_bw_layer2": (320, 320), "b_f_fw_layer1": (1, 320), "b_f_fw_layer2": (1, 320),
    "W_f_h_bw_layer1": (320, 320), "b_f_bw_layer1": (1, 320), "b_f_bw_layer2": (1, 320),
    "peephole_i_c_fw_layer2": (1, 320), "W_c_h_bw_layer2": (320, 320),
    "b_i_fw_layer2": (1, 320), "peephole_i_c_bw_layer2": (1, 320),
    "peephole_o_c_bw_layer1": (1, 320), "b_i_bw_layer2": (1, 320),
    "b_i_bw_layer1": (1, 320), "peephole_o_c_bw_layer2": (1, 320),
    "peephole_i_c_fw_layer1": (1, 320), "W_o_h_bw_layer1": (320, 320),
    "peephole_i_c_bw_layer1": (1, 320), "W_o_h_bw_layer2": (320, 320),
}


def _seed_000_from_file():
    files = sorted(SEED_DIR.glob("000_*.txt"))
    if not files:
        pytest.skip("seed 000 document not present")
    shapes = {}
    for line in files[0].read_text().splitlines():
        m = re.fullmatch(r"\s*(\w+)\s*:\s*\((\d+),\s*(\d+)\)\s*", line)
        if m:
            shapes[m.group(1)] = (int(m.group(2)), int(m.group(3)))
    return shapes


@pytest.fixture(scope="module")
def seed_net():
    return lstmx.LSTM(360, 320, num_layers=2, bidirectional=True, peephole=True,
                      output_size=44, dtype=np.float32, seed=0)


def test_copied_list_is_the_seed_document():
    assert _seed_000_from_file() == SEED_000
    assert len(SEED_000) == 62


def test_seed_000_names_and_shapes(seed_net):
    got = {name: tuple(view.shape) for name, view in seed_net.params.items()}
    assert got == SEED_000
    for name, view in seed_net.params.items():
        assert view.dtype == np.float32, name


def test_seed_000_views_share_flat(seed_net):
    flat = seed_net.flat
    assert flat.ndim == 1 and flat.flags.c_contiguous and flat.dtype == np.float32
    assert flat.size == sum(int(np.prod(s)) for s in SEED_000.values())
    for name, view in seed_net.params.items():
        assert np.shares_memory(view, flat), name


def test_seed_000_write_through_view_changes_predict(seed_net, rng):
    x = rng.standard_normal((3, 1, 360)).astype(np.float32)
    base = seed_net.predict(x)
    assert base.shape == (3, 1, 44)
    for name in ("W_i_x_fw_layer1", "peephole_f_c_bw_layer2", "Fully_connected_layerbiases"):
        view = seed_net.params[name]
        saved = view.copy()
        view += 0.5
        changed = seed_net.predict(x)
        view[...] = saved
        assert not np.allclose(changed, base, atol=1e-6), name
        np.testing.assert_array_equal(seed_net.predict(x), base)


def test_seed_000_init_ranges(seed_net):
    bound = 1 / np.sqrt(320)
    head_bound = 1 / np.sqrt(640)
    for name, view in seed_net.params.items():
        b = head_bound if name.startswith("Fully_connected") else bound
        assert np.all(np.abs(view) <= b * (1 + 1e-6)), name
        if view.size >= 1000:
            # Uniform over the whole range, not a narrower one, and centred.
            assert view.max() > 0.95 * b and view.min() < -0.95 * b, name
            assert abs(float(view.mean())) < 0.05 * b, name
            assert float(view.std()) == pytest.approx(b / np.sqrt(3), rel=0.05), name
    assert np.all(np.isfinite(seed_net.flat))


ARCHS = [Arch(3, 4, 2, True, True, 2), Arch(3, 4, 2, True, False, None),
         Arch(5, 3, 3, False, True, None), Arch(2, 6, 1, False, False, 7)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.id)
def test_names_shapes_and_layout(arch, dtype):
    net = arch.make(dtype=dtype, seed=1)
    expected = parameter_shapes(arch.input_size, arch.hidden_size, arch.num_layers,
                                arch.bidirectional, arch.peephole, arch.output_size)
    assert {k: tuple(v.shape) for k, v in net.params.items()} == expected
    assert len(net.params) == len(expected)
    if not arch.peephole:
        assert not any(k.startswith("peephole") for k in net.params)
    if arch.output_size is None:
        assert not any(k.startswith("Fully_connected") for k in net.params)
    if not arch.bidirectional:
        assert not any("_bw_" in k for k in net.params)
    flat = net.flat
    assert flat.ndim == 1 and flat.flags.c_contiguous and flat.dtype == dtype
    # The views tile the flat buffer exactly: disjoint, and covering every element.
    saved = flat.copy()
    flat[...] = 0
    for k, view in enumerate(net.params.values(), start=1):
        assert np.shares_memory(view, flat)
        assert view.dtype == dtype
        view[...] = k
    counts = np.bincount(flat.astype(np.int64), minlength=len(expected) + 1)
    assert counts[0] == 0
    for k, view in enumerate(net.params.values(), start=1):
        assert counts[k] == view.size
    flat[...] = saved


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: a.id)
def test_every_view_writes_through_to_predict(arch, rng):
    net = arch.make(seed=2)
    x = random_x(rng, 4, 2, arch.input_size)
    base = net.predict(x)
    for name, view in net.params.items():
        saved = view.copy()
        view += 0.3
        changed = net.predict(x)
        view[...] = saved
        assert not np.allclose(changed, base, rtol=0, atol=1e-9), name
    np.testing.assert_array_equal(net.predict(x), base)


def test_flat_writes_show_in_views_and_output(rng):
    net = Arch(3, 4, 2, True, True, 2).make(seed=3)
    x = random_x(rng, 4, 2, 3)
    net.flat[...] = 0.0
    assert all(np.all(v == 0) for v in net.params.values())
    np.testing.assert_array_equal(net.predict(x), 0.0)  # zero weights, zero head -> zeros
    net.params["Fully_connected_layerbiases"][...] = [[1.5, -2.0]]
    y = net.predict(x)
    np.testing.assert_array_equal(y, np.broadcast_to([1.5, -2.0], y.shape))


def test_grads_have_the_same_names(rng):
    net = Arch(3, 4, 2, True, True, 2).make(seed=4)
    _, cache = net.forward(random_x(rng, 4, 2, 3))
    grads = net.backward(rng.standard_normal((4, 2, 2)), cache)
    assert set(grads.keys()) == set(net.params.keys())
    for name in net.params:
        assert grads[name].shape == net.params[name].shape
        assert grads[name].dtype == net.dtype
    assert len(grads) == len(net.params)
    assert set(grads) == set(net.params)  # iterating a Mapping gives its names


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_init_range_small_net(dtype):
    H, D = 16, 2
    net = lstmx.LSTM(8, H, num_layers=2, bidirectional=True, output_size=5, dtype=dtype, seed=5)
    for name, view in net.params.items():
        b = 1 / np.sqrt(D * H) if name.startswith("Fully_connected") else 1 / np.sqrt(H)
        assert np.all(np.abs(view) <= b * (1 + 1e-6)), name
        assert np.any(view != 0), name  # biases and peepholes are initialised too


def test_seed_reproducibility():
    kwargs = dict(num_layers=2, bidirectional=True, output_size=3)
    a = lstmx.LSTM(5, 6, seed=123, **kwargs)
    b = lstmx.LSTM(5, 6, seed=123, **kwargs)
    c = lstmx.LSTM(5, 6, seed=124, **kwargs)
    np.testing.assert_array_equal(a.flat, b.flat)
    assert a.flat.tobytes() == b.flat.tobytes()
    assert not np.array_equal(a.flat, c.flat)
    a64 = lstmx.LSTM(5, 6, seed=123, dtype=np.float64, **kwargs)
    b64 = lstmx.LSTM(5, 6, seed=123, dtype=np.float64, **kwargs)
    assert a64.flat.tobytes() == b64.flat.tobytes()
    # No seed: fresh randomness each time.
    assert not np.array_equal(lstmx.LSTM(5, 6, **kwargs).flat, lstmx.LSTM(5, 6, **kwargs).flat)


def test_nets_do_not_share_buffers():
    a = lstmx.LSTM(3, 4, seed=1)
    b = lstmx.LSTM(3, 4, seed=1)
    assert not np.shares_memory(a.flat, b.flat)
    a.flat[...] = 0
    assert np.any(b.flat != 0)


@pytest.mark.parametrize("dtype", [np.float16, np.int32, np.int64, np.complex128, object, bool, "U3"],
                         ids=["f16", "i32", "i64", "c128", "object", "bool", "str"])
def test_unsupported_dtype_is_type_error(dtype):
    with pytest.raises(TypeError):
        lstmx.LSTM(3, 4, dtype=dtype)
