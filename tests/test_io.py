"""lstmx.io: torch.nn.LSTM/Linear and ONNX (onnxruntime) in and out."""

import importlib
import sys
import warnings

import numpy as np
import pytest

import lstmx
from helpers import padding_mask, random_x, torch_modules_from_params

I, H, T, N = 3, 4, 6, 3
LENGTHS = np.array([6, 2, 4], np.int32)

# (num_layers, bidirectional, output_size)
SHAPES = [(1, False, None), (1, True, 2), (2, False, 2), (2, True, None), (3, True, 2)]
SHAPE_IDS = [f"L{L}-{'bi' if bi else 'uni'}-{'head' if o else 'nohead'}" for L, bi, o in SHAPES]


def make(L, bi, out, peephole, dtype=np.float32, batch_first=False, seed=5):
    return lstmx.LSTM(I, H, num_layers=L, bidirectional=bi, peephole=peephole, output_size=out,
                      dtype=dtype, seed=seed, batch_first=batch_first)


def test_lstmx_io_imports_without_torch_or_onnx(monkeypatch):
    """torch, onnx and onnxruntime are imported inside the functions only."""
    for name in ("torch", "onnx", "onnxruntime"):
        monkeypatch.setitem(sys.modules, name, None)     # importing it now raises ImportError
    importlib.reload(lstmx.io)
    assert lstmx.io.from_torch and "io" in lstmx.__all__


# ---------------------------------------------------------------- torch ----


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _torch_predict(torch, lstm, linear, x):
    with torch.no_grad():
        y, _ = lstm(torch.from_numpy(x))
        if linear is not None:
            y = linear(y)
    return y.numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("L,bi,out", SHAPES, ids=SHAPE_IDS)
def test_to_torch_round_trip_and_agreement(torch, L, bi, out, dtype, rng):
    net = make(L, bi, out, peephole=False, dtype=dtype)
    lstm, linear = lstmx.io.to_torch(net)
    assert isinstance(lstm, torch.nn.LSTM) and (linear is None) == (out is None)
    assert lstm.weight_ih_l0.dtype == (torch.float32 if dtype == np.float32 else torch.float64)
    assert not lstm.bias_hh_l0.any()
    back = lstmx.io.from_torch(lstm, linear)
    np.testing.assert_array_equal(back.flat, net.flat)
    assert (back.num_layers, back.bidirectional, back.output_size, back.dtype, back.peephole) == \
        (L, bi, out, np.dtype(dtype), False)
    x = random_x(rng, T, N, I, dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(net.predict(x), _torch_predict(torch, lstm, linear, x), rtol=0, atol=tol)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("L,bi,out", SHAPES, ids=SHAPE_IDS)
def test_from_torch_matches_torch(torch, L, bi, out, bias, rng):
    torch.manual_seed(L * 10 + bi)
    lstm = torch.nn.LSTM(I, H, num_layers=L, bidirectional=bi, bias=bias, dtype=torch.float64)
    linear = None if out is None else torch.nn.Linear((1 + bi) * H, out, bias=bias, dtype=torch.float64)
    if bias:   # make the bias_hh part matter
        with torch.no_grad():
            lstm.bias_hh_l0.uniform_(-1, 1)
    net = lstmx.io.from_torch(lstm, linear)
    assert net.dtype == np.float64 and not net.peephole
    x = random_x(rng, T, N, I)
    np.testing.assert_allclose(net.predict(x), _torch_predict(torch, lstm, linear, x), rtol=0, atol=1e-12)
    if not bias:
        assert not any(np.any(v) for k, v in net.params.items() if k.startswith("b_"))
        if out is not None:
            assert not np.any(net.params["Fully_connected_layerbiases"])


def test_from_torch_names_match_independent_mapping(torch, rng):
    """tests/helpers.py maps seed-000 names onto torch's keys on its own;
    from_torch must invert it (biases split at random between ih and hh)."""
    net = make(2, True, 2, peephole=False, dtype=np.float64)
    lstm, linear = torch_modules_from_params(
        {k: np.array(v) for k, v in net.params.items()}, input_size=I, hidden_size=H,
        num_layers=2, bidirectional=True, output_size=2, dtype=np.float64, bias_split_rng=rng)
    back = lstmx.io.from_torch(lstm, linear)
    for name, view in net.params.items():
        np.testing.assert_allclose(back.params[name], view, rtol=0, atol=1e-15, err_msg=name)


def test_from_torch_batch_first_and_float32(torch, rng):
    lstm = torch.nn.LSTM(I, H, num_layers=2, batch_first=True)
    net = lstmx.io.from_torch(lstm)
    assert net.batch_first and net.dtype == np.float32 and net.output_size is None
    x = random_x(rng, N, T, I, np.float32)      # (N, T, I)
    np.testing.assert_allclose(net.predict(x), _torch_predict(torch, lstm, None, x), rtol=0, atol=1e-5)
    lstm2, _ = lstmx.io.to_torch(net)
    assert lstm2.batch_first


def test_from_torch_dropout_warns(torch):
    lstm = torch.nn.LSTM(I, H, num_layers=2, dropout=0.25)
    with pytest.warns(UserWarning, match="dropout=0.25 is not carried over"):
        lstmx.io.from_torch(lstm)


def test_torch_refusals(torch):
    with pytest.raises(ValueError, match="net: has peephole connections"):
        lstmx.io.to_torch(make(1, False, None, peephole=True))
    with pytest.raises(ValueError, match="proj_size=2"):
        lstmx.io.from_torch(torch.nn.LSTM(I, H, proj_size=2))
    with pytest.raises(ValueError, match="lstm: parameters of dtype torch.float16"):
        lstmx.io.from_torch(torch.nn.LSTM(I, H, dtype=torch.float16))
    with pytest.raises(ValueError, match=r"linear: in_features=5, but .* D\*H = 8"):
        lstmx.io.from_torch(torch.nn.LSTM(I, H, bidirectional=True), torch.nn.Linear(5, 2))
    with pytest.raises(ValueError, match="linear: dtype torch.float64 differs"):
        lstmx.io.from_torch(torch.nn.LSTM(I, H), torch.nn.Linear(H, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="lstm: expected a torch.nn.LSTM, got GRU"):
        lstmx.io.from_torch(torch.nn.GRU(I, H))
    with pytest.raises(TypeError, match="net: expected an lstmx.LSTM"):
        lstmx.io.to_torch(torch.nn.LSTM(I, H))


# ----------------------------------------------------------------- ONNX ----


@pytest.fixture(scope="module")
def onnx():
    return pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def ort():
    return pytest.importorskip("onnxruntime")


def _run_ort(ort, path, x, lengths=None):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {"x": x}
    if lengths is not None:
        feed["lengths"] = lengths
    return sess.run(["y"], feed)[0]


ONNX_SHAPES = [(1, False, None), (2, False, 2), (2, True, 2), (2, True, None), (1, True, 3)]
ONNX_IDS = [f"L{L}-{'bi' if bi else 'uni'}-{'head' if o else 'nohead'}" for L, bi, o in ONNX_SHAPES]


@pytest.mark.parametrize("peephole", [True, False], ids=["peep", "nopeep"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("L,bi,out", ONNX_SHAPES, ids=ONNX_IDS)
def test_to_onnx_matches_onnxruntime_and_round_trips(onnx, ort, tmp_path, L, bi, out,
                                                     with_lengths, peephole, rng):
    net = make(L, bi, out, peephole)
    # Large peepholes, so that a swapped p_f/p_o would show.
    if peephole:
        for name, view in net.params.items():
            if name.startswith("peephole_"):
                view[...] = rng.uniform(-2, 2, view.shape)
    path = tmp_path / "net.onnx"
    model = lstmx.io.to_onnx(net, path, with_lengths=with_lengths)
    assert [i.name for i in model.graph.input] == (["x", "lengths"] if with_lengths else ["x"])
    assert [o.name for o in model.graph.output] == ["y"]
    assert sum(n.op_type == "LSTM" for n in model.graph.node) == L
    x = random_x(rng, T, N, I, np.float32)
    lengths = LENGTHS if with_lengths else None
    y = _run_ort(ort, path, x, lengths)
    ours = net.predict(x, lengths=lengths)
    np.testing.assert_allclose(y, ours, rtol=0, atol=1e-5)
    if with_lengths:
        # exactly zero at padded steps, with a head too
        assert not np.any(y[~padding_mask(LENGTHS, T)])
    back = lstmx.io.from_onnx(path)
    np.testing.assert_array_equal(back.flat, net.flat)
    assert (back.num_layers, back.bidirectional, back.output_size, back.peephole, back.dtype) == \
        (L, bi, out, peephole, np.dtype(np.float32))


def test_to_onnx_batch_first(onnx, ort, tmp_path, rng):
    net = make(2, True, 2, True, batch_first=True)
    lstmx.io.to_onnx(net, tmp_path / "bf.onnx", with_lengths=True)
    x = random_x(rng, N, T, I, np.float32)      # (N, T, I)
    y = _run_ort(ort, tmp_path / "bf.onnx", x, LENGTHS)
    np.testing.assert_allclose(y, net.predict(x, lengths=LENGTHS), rtol=0, atol=1e-5)
    back = lstmx.io.from_onnx(tmp_path / "bf.onnx")
    assert back.batch_first
    np.testing.assert_array_equal(back.flat, net.flat)


def test_to_onnx_float64_is_refused_unless_cast(onnx, ort, tmp_path, rng):
    net = make(2, True, 2, True, dtype=np.float64)
    with pytest.raises(ValueError, match="dtype: float64 export is refused.*dtype=numpy.float32"):
        lstmx.io.to_onnx(net, tmp_path / "f64.onnx")
    lstmx.io.to_onnx(net, tmp_path / "f32.onnx", dtype=np.float32)
    x = random_x(rng, T, N, I, np.float32)
    np.testing.assert_allclose(_run_ort(ort, tmp_path / "f32.onnx", x), net.predict(x), rtol=0, atol=1e-5)
    back = lstmx.io.from_onnx(tmp_path / "f32.onnx")
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back.flat, net.flat.astype(np.float32))


@pytest.mark.parametrize("bi,L,batch_first,bias,head,opset", [
    (True, 2, False, True, True, None), (False, 1, True, True, True, None),
    (False, 3, False, False, False, None), (True, 1, True, True, False, None),
    (False, 2, False, True, True, 11)],
    ids=["bi-L2-head", "uni-L1-batch_first-head", "uni-L3-nobias", "bi-L1-batch_first",
         "uni-L2-head-opset11"])
def test_from_onnx_of_torch_export(torch, onnx, tmp_path, bi, L, batch_first, bias, head, opset, rng):
    """torch.onnx.export with the TorchScript exporter (dynamo=False): the
    dynamo exporter needs onnxscript, which is not installed here."""

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(I, H, num_layers=L, bidirectional=bi, bias=bias,
                                      batch_first=batch_first)
            self.fc = torch.nn.Linear((1 + bi) * H, 2) if head else None

        def forward(self, x):
            y, _ = self.lstm(x)
            return y if self.fc is None else self.fc(y)

    torch.manual_seed(3)
    model = Model().eval()
    x = random_x(rng, T, N, I, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(x),), str(tmp_path / "t.onnx"), dynamo=False,
                          input_names=["x"], output_names=["y"], opset_version=opset,
                          dynamic_axes={"x": {0: "a", 1: "b"}, "y": {0: "a", 1: "b"}})
    net = lstmx.io.from_onnx(tmp_path / "t.onnx")
    assert net.batch_first == batch_first and net.num_layers == L and net.bidirectional == bi
    assert not net.peephole
    np.testing.assert_array_equal(net.flat, lstmx.io.from_torch(model.lstm, model.fc).flat)
    with torch.no_grad():
        ty = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(net.predict(x), ty, rtol=0, atol=1e-5)


def _simple_model(onnx, *, lstm_attrs=None, extra_inputs=(), op_after=None, hidden=2):
    """One forward LSTM layer on x (T, N, 3) -> Y -> Squeeze -> y, to be spoiled."""
    from onnx import TensorProto, helper, numpy_helper

    r = np.random.default_rng(0)
    inits = [numpy_helper.from_array(r.standard_normal((1, 4 * hidden, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(r.standard_normal((1, 4 * hidden, hidden)).astype(np.float32), "R"),
             numpy_helper.from_array(np.array([1], np.int64), "axes")]
    nodes = [helper.make_node("LSTM", ["x", "W", "R", *extra_inputs], ["Y"], hidden_size=hidden,
                              **(lstm_attrs or {})),
             helper.make_node("Squeeze", ["Y", "axes"], ["h"])]
    last = "h"
    if op_after:
        nodes.append(helper.make_node(op_after, ["h"], ["h2"]))
        last = "h2"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", "N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["T", "N", hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_from_onnx_minimal_model_loads(onnx):
    net = lstmx.io.from_onnx(_simple_model(onnx))
    assert (net.hidden_size, net.input_size, net.peephole, net.output_size) == (2, 3, False, None)
    assert not np.any(net.params["b_i_fw_layer1"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(lstm_attrs={"clip": 3.0}), "attribute clip is not supported"),
    (dict(lstm_attrs={"input_forget": 1}), "input_forget=1"),
    (dict(lstm_attrs={"layout": 1}), "layout=1"),
    (dict(lstm_attrs={"direction": "reverse"}), "direction='reverse' is not supported"),
    (dict(lstm_attrs={"activations": ["Sigmoid", "Relu", "Tanh"]}),
     r"activations=\['Sigmoid', 'Relu', 'Tanh'\] are not supported"),
    (dict(op_after="Relu"), r"a Relu node: this operator cannot be mapped"),
    (dict(op_after="Tanh"), r"a Tanh node: this operator cannot be mapped"),
    (dict(extra_inputs=["", "", "W"]), "initial_h must be absent or zeros"),
], ids=["clip", "input_forget", "layout", "reverse", "activations", "relu", "tanh", "initial_h"])
def test_from_onnx_refusals(onnx, kwargs, match):
    with pytest.raises(ValueError, match=match):
        lstmx.io.from_onnx(_simple_model(onnx, **kwargs))


def test_from_onnx_refuses_final_state_output_and_unmasked_head(onnx, tmp_path):
    from onnx import helper

    net = make(1, False, 2, True)
    model = lstmx.io.to_onnx(net, tmp_path / "a.onnx", with_lengths=True)
    # Drop the mask: y becomes the head's raw output, its bias at padded steps.
    nodes = [n for n in model.graph.node if n.op_type != "Where"]
    for n in nodes:
        for i, name in enumerate(n.input):
            if name == "fc_out_masked":
                n.input[i] = "fc_out"
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    with pytest.raises(ValueError, match="head's output at padded steps is its bias"):
        lstmx.io.from_onnx(model)
    # Output Y_h too.
    model = lstmx.io.to_onnx(net, tmp_path / "b.onnx")
    lstm_node = next(n for n in model.graph.node if n.op_type == "LSTM")
    lstm_node.output.extend(["Y_h"])
    model.graph.output.append(helper.make_tensor_value_info("Y_h", onnx.TensorProto.FLOAT, None))
    with pytest.raises(ValueError, match="2 outputs"):
        lstmx.io.from_onnx(model)


def test_from_onnx_refuses_wrong_mask(onnx, tmp_path):
    from onnx import numpy_helper

    model = lstmx.io.to_onnx(make(1, True, 2, True), tmp_path / "a.onnx", with_lengths=True)
    for k, t in enumerate(model.graph.initializer):
        if t.name == "range_start":   # t counts from 1: the mask is off by one
            model.graph.initializer[k].CopyFrom(numpy_helper.from_array(np.array(1, np.int64), t.name))
    with pytest.raises(ValueError, match="does not zero exactly the padded steps"):
        lstmx.io.from_onnx(model)


def test_from_onnx_type_error(onnx):
    with pytest.raises(TypeError, match="path: expected a file path or an onnx.ModelProto"):
        lstmx.io.from_onnx(42)


def test_from_onnx_input_without_declared_shape(onnx, tmp_path):
    """An input whose shape is not declared is read (its size then comes
    from W), rather than failing on the missing dimensions."""
    net = lstmx.LSTM(3, 4, output_size=2, seed=0)
    path = tmp_path / "m.onnx"
    lstmx.io.to_onnx(net, path)
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.ClearField("shape")
    onnx.save(model, str(path))
    np.testing.assert_array_equal(lstmx.io.from_onnx(path).flat, net.flat)
