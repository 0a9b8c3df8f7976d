"""Interoperability: PyTorch modules and ONNX models, in and out.

* :func:`from_torch` / :func:`to_torch` — ``torch.nn.LSTM`` (+ ``torch.nn.Linear``)
* :func:`to_onnx` / :func:`from_onnx` — an ONNX graph of standard ``LSTM``
  operators, one per layer, plus the head

torch, onnx and onnxruntime stay optional: they are imported inside these
functions only, so ``import lstmx`` never imports them. The parameter mapping
of each format onto seed 000's names is tabulated in ``docs/formats.md``.

Gate orders (each a block of H rows of the packed (4H, ...) matrices):

    lstmx, torch:  i, f, c(g), o
    ONNX:          i, o, f, c         peepholes: lstmx i, f, o; ONNX i, o, f
"""
import os
import warnings

import numpy as np

from .lstm import FC_BIASES, FC_WEIGHTS, LSTM

__all__ = ["from_torch", "to_torch", "to_onnx", "from_onnx"]

# ONNX gate block j is our gate block _OURS_FOR_ONNX[j]; and back.
_OURS_FOR_ONNX = (0, 3, 1, 2)
_ONNX_FOR_OURS = (0, 2, 3, 1)
# Peepholes: ours (i, f, o) <-> ONNX (i, o, f); the swap is its own inverse.
_PEEP_SWAP = (0, 2, 1)

# Opset 17 (LSTM-14 with `layout`), IR version 8: loadable by onnxruntime
# >= 1.13; onnx's own default IR version can be newer than onnxruntime reads.
ONNX_OPSET = 17
ONNX_IR_VERSION = 8


def _gate_blocks(a, order, H):
    """Rows (or entries) of ``a`` regrouped by H-sized gate blocks in ``order``."""
    return np.concatenate([a[k * H:(k + 1) * H] for k in order], axis=0)


# ----------------------------------------------------------------------
# PyTorch


def _torch_dtype_to_numpy(torch, dtype, what):
    if dtype == torch.float32:
        return np.dtype(np.float32)
    if dtype == torch.float64:
        return np.dtype(np.float64)
    raise ValueError(f"{what}: parameters of dtype {dtype} are not supported; lstmx runs "
                     f"float32 or float64 (convert with .float() or .double())")


def from_torch(lstm, linear=None):
    """Build an :class:`lstmx.LSTM` from a ``torch.nn.LSTM`` and an optional
    ``torch.nn.Linear`` head.

    Parameters
    ----------
    lstm : torch.nn.LSTM
        Any ``num_layers``, ``bidirectional``, ``bias`` and ``batch_first``;
        ``proj_size`` must be 0. Parameters ``weight_ih_l{k}[_reverse]``
        (4H, I_k), ``weight_hh_l{k}[_reverse]`` (4H, H) and the biases (4H,)
        are copied in gate order i, f, g(c), o; the two biases are summed into
        lstmx's one (absent biases are zeros). ``dropout`` acts only while
        training in torch and lstmx has none: it is dropped with a warning.
    linear : torch.nn.Linear, optional
        Head with ``in_features == D*H``; its weight (O, D*H) and bias (O,)
        (zeros if it has none) become ``Fully_connected_layerweights`` /
        ``Fully_connected_layerbiases``.

    Returns
    -------
    lstmx.LSTM
        ``peephole=False``, dtype of the torch parameters (float32 or float64),
        ``batch_first`` as the torch module's.
    """
    import torch

    if not isinstance(lstm, torch.nn.LSTM):
        raise TypeError(f"lstm: expected a torch.nn.LSTM, got {type(lstm).__name__}")
    if getattr(lstm, "proj_size", 0):
        raise ValueError(f"lstm: proj_size={lstm.proj_size} (LSTM with projections) cannot be "
                         f"represented in lstmx; only proj_size=0 is supported")
    if linear is not None and not isinstance(linear, torch.nn.Linear):
        raise TypeError(f"linear: expected a torch.nn.Linear or None, got {type(linear).__name__}")
    dtype = _torch_dtype_to_numpy(torch, lstm.weight_ih_l0.dtype, "lstm")
    for name, p in lstm.named_parameters():
        if p.dtype != lstm.weight_ih_l0.dtype:
            raise ValueError(f"lstm: parameter {name} has dtype {p.dtype}, but weight_ih_l0 has "
                             f"{lstm.weight_ih_l0.dtype}; all parameters must share one dtype")
    if lstm.dropout and lstm.num_layers > 1:
        warnings.warn(f"lstm: dropout={lstm.dropout} is not carried over (lstmx has no dropout); "
                      f"inference is unaffected", UserWarning, stacklevel=2)
    H, L = lstm.hidden_size, lstm.num_layers
    D = 2 if lstm.bidirectional else 1
    output_size = None
    if linear is not None:
        if linear.in_features != D * H:
            raise ValueError(f"linear: in_features={linear.in_features}, but the LSTM's output "
                             f"is D*H = {D * H} wide")
        if linear.weight.dtype != lstm.weight_ih_l0.dtype:
            raise ValueError(f"linear: dtype {linear.weight.dtype} differs from the LSTM's "
                             f"{lstm.weight_ih_l0.dtype}")
        output_size = linear.out_features

    def numpy(t):
        return t.detach().cpu().numpy()

    net = LSTM(lstm.input_size, H, num_layers=L, bidirectional=D == 2, peephole=False,
               output_size=output_size, dtype=dtype, seed=0, batch_first=lstm.batch_first)
    for layer in range(L):
        for d in range(D):
            sfx = f"l{layer}" + ("_reverse" if d else "")
            w_x, w_h, bias, _ = net._packed[layer * D + d]
            w_x[...] = numpy(getattr(lstm, f"weight_ih_{sfx}"))
            w_h[...] = numpy(getattr(lstm, f"weight_hh_{sfx}"))
            if lstm.bias:
                # Summed in the parameters' own dtype, as torch adds them.
                bias[...] = numpy(getattr(lstm, f"bias_ih_{sfx}")) + numpy(getattr(lstm, f"bias_hh_{sfx}"))
            else:
                bias[...] = 0
    if linear is not None:
        net.params[FC_WEIGHTS][...] = numpy(linear.weight)
        net.params[FC_BIASES][...] = 0 if linear.bias is None else numpy(linear.bias)
    return net


def to_torch(net):
    """Copy a network without peepholes into torch modules.

    Parameters
    ----------
    net : lstmx.LSTM
        ``peephole=False`` (torch's LSTM has no peepholes).

    Returns
    -------
    lstm : torch.nn.LSTM
        ``bias=True``: our bias (4H,) goes to ``bias_ih_l{k}[_reverse]``, and
        ``bias_hh_l{k}[_reverse]`` is zero. Same dtype and ``batch_first``.
    linear : torch.nn.Linear or None
        The head (O, D*H) + (O,), when the network has one.
    """
    import torch

    if not isinstance(net, LSTM):
        raise TypeError(f"net: expected an lstmx.LSTM, got {type(net).__name__}")
    if net.peephole:
        raise ValueError("net: has peephole connections, which torch.nn.LSTM cannot represent; "
                         "only networks built with peephole=False can be exported to torch")
    tdtype = torch.float32 if net.dtype == np.float32 else torch.float64
    H, L, D = net.hidden_size, net.num_layers, net.num_directions
    lstm = torch.nn.LSTM(net.input_size, H, num_layers=L, bias=True, batch_first=net.batch_first,
                         bidirectional=net.bidirectional, dtype=tdtype)
    linear = None
    with torch.no_grad():
        for layer in range(L):
            for d in range(D):
                sfx = f"l{layer}" + ("_reverse" if d else "")
                w_x, w_h, bias, _ = net._packed[layer * D + d]
                getattr(lstm, f"weight_ih_{sfx}").copy_(torch.from_numpy(w_x.copy()))
                getattr(lstm, f"weight_hh_{sfx}").copy_(torch.from_numpy(w_h.copy()))
                getattr(lstm, f"bias_ih_{sfx}").copy_(torch.from_numpy(bias.copy()))
                getattr(lstm, f"bias_hh_{sfx}").zero_()
        if net.output_size is not None:
            linear = torch.nn.Linear(D * H, net.output_size, bias=True, dtype=tdtype)
            linear.weight.copy_(torch.from_numpy(net.params[FC_WEIGHTS].copy()))
            linear.bias.copy_(torch.from_numpy(net.params[FC_BIASES].ravel().copy()))
    return lstm, linear


# ----------------------------------------------------------------------
# ONNX out


def to_onnx(net, path, *, with_lengths=False, dtype=None):
    """Write ``net`` as an ONNX model of standard ``LSTM`` operators.

    The graph: input ``x`` (T, N, I) — (N, T, I) when ``net.batch_first`` —
    and, with ``with_lengths``, ``lengths`` int32 (N,), fed to every LSTM as
    ``sequence_lens``; one ``LSTM`` node per layer (W [D, 4H, I_k],
    R [D, 4H, H], B [D, 8H] = our bias then zeros, P [D, 3H] with peepholes;
    gates reordered to ONNX's i, o, f, c), each layer's Y [T, D, N, H]
    transposed and reshaped to [T, N, D*H]; the head as MatMul + Add. Output
    ``y`` is laid out like ``net.predict``'s: (T, N, O), or (T, N, D*H)
    without a head. With lengths and a head, ``y`` is zeroed at padded steps
    (a ``Where`` on t < lengths[n]), as lstmx does; LSTM outputs there are
    zero already.

    Parameters
    ----------
    net : lstmx.LSTM
    path : str, os.PathLike or a writable binary file
    with_lengths : bool
        Add the ``lengths`` input.
    dtype : numpy.float32 or None
        None exports in the network's dtype. onnxruntime has no float64 LSTM
        kernel, so a float64 network is refused unless ``dtype=np.float32``
        asks for a float32 copy.

    Returns
    -------
    onnx.ModelProto
        The model written.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if not isinstance(net, LSTM):
        raise TypeError(f"net: expected an lstmx.LSTM, got {type(net).__name__}")
    if dtype is None:
        dtype = net.dtype
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype: expected numpy.float32 or None, got {dtype!r}") from None
    if dtype == np.float64:
        raise ValueError("dtype: float64 export is refused: onnxruntime's LSTM operator supports "
                         "float32 only; pass dtype=numpy.float32 to export a float32 copy")
    if dtype != np.float32:
        raise TypeError(f"dtype: expected numpy.float32 or None, got {dtype}")
    elem = TensorProto.FLOAT
    H, L, D = net.hidden_size, net.num_layers, net.num_directions

    nodes, inits = [], []

    def init(name, array):
        inits.append(numpy_helper.from_array(np.array(array, order="C"), name))  # keeps 0-d
        return name

    def node(op, inputs, outputs, **attrs):
        nodes.append(helper.make_node(op, inputs, outputs, name=outputs[0], **attrs))
        return outputs[0]

    inputs = [helper.make_tensor_value_info(
        "x", elem, ["N", "T", net.input_size] if net.batch_first else ["T", "N", net.input_size])]
    if with_lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, ["N"]))

    h = "x"
    if net.batch_first:
        h = node("Transpose", [h], ["x_time_major"], perm=[1, 0, 2])
    x_time_major = h
    merge = init("merge_directions_shape", np.array([0, 0, -1], np.int64))
    for layer in range(L):
        w, r, b, p = [], [], [], []
        for d in range(D):
            w_x, w_h, bias, peep = net._packed[layer * D + d]
            w.append(_gate_blocks(w_x, _OURS_FOR_ONNX, H))
            r.append(_gate_blocks(w_h, _OURS_FOR_ONNX, H))
            b.append(np.concatenate([_gate_blocks(bias, _OURS_FOR_ONNX, H), np.zeros(4 * H)]))
            if peep is not None:
                p.append(_gate_blocks(peep, _PEEP_SWAP, H))
        k = layer + 1
        lstm_inputs = [h, init(f"W_layer{k}", np.stack(w).astype(dtype)),
                       init(f"R_layer{k}", np.stack(r).astype(dtype)),
                       init(f"B_layer{k}", np.stack(b).astype(dtype)),
                       "lengths" if with_lengths else "", "", ""]
        if net.peephole:
            lstm_inputs.append(init(f"P_layer{k}", np.stack(p).astype(dtype)))
        while lstm_inputs[-1] == "":
            lstm_inputs.pop()
        y = node("LSTM", lstm_inputs, [f"Y_layer{k}"], hidden_size=H,
                 direction="bidirectional" if D == 2 else "forward")
        # Y [T, D, N, H] -> [T, N, D, H] -> [T, N, D*H] = [h_fw, h_bw]
        y = node("Transpose", [y], [f"Y_layer{k}_TNDH"], perm=[0, 2, 1, 3])
        h = node("Reshape", [y, merge], [f"h_layer{k}"])
    if net.output_size is not None:
        h = node("MatMul", [h, init("fc_weight_T", net.params[FC_WEIGHTS].T.astype(dtype))], ["fc_matmul"])
        h = node("Add", [h, init("fc_bias", net.params[FC_BIASES].ravel().astype(dtype))], ["fc_out"])
        if with_lengths:
            # onnxruntime zeroes Y at t >= lengths[n], but the head adds its
            # bias there; zero y there as lstmx does: y = where(t < len, y, 0).
            shape = node("Shape", [x_time_major], ["x_shape"])
            steps = node("Gather", [shape, init("zero_i64", np.array(0, np.int64))], ["num_steps"], axis=0)
            t = node("Range", [init("range_start", np.array(0, np.int64)), steps,
                               init("range_delta", np.array(1, np.int64))], ["steps"])
            t = node("Unsqueeze", [t, init("axes_12", np.array([1, 2], np.int64))], ["steps_T11"])
            n_len = node("Cast", ["lengths"], ["lengths_i64"], to=TensorProto.INT64)
            n_len = node("Unsqueeze", [n_len, init("axes_02", np.array([0, 2], np.int64))], ["lengths_1N1"])
            valid = node("Less", [t, n_len], ["valid_steps"])
            h = node("Where", [valid, h, init("zero_output", np.zeros((), dtype))], ["fc_out_masked"])
    if net.batch_first:
        h = node("Transpose", [h], ["y_batch_first"], perm=[1, 0, 2])
    node("Identity", [h], ["y"])
    width = net.output_size if net.output_size is not None else D * H
    out_shape = ["N", "T", width] if net.batch_first else ["T", "N", width]
    graph = helper.make_graph(nodes, "lstmx", inputs,
                              [helper.make_tensor_value_info("y", elem, out_shape)], inits)
    model = helper.make_model(graph, producer_name="lstmx", ir_version=ONNX_IR_VERSION,
                              opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return model


# ----------------------------------------------------------------------
# ONNX in
#
# from_onnx walks the graph once, in its (topological) order, giving every
# tensor an abstract value: a constant (initializers, Constant nodes and what
# folds from them), "all zeros" (initial states built by ConstantOfShape),
# "dynamic" (integer shape/lengths arithmetic), or the data tensor, whose
# axes are labelled (x0, x1 = the input's first two axes, T/N once the first
# LSTM has read them, D and H of an LSTM's Y, F features). Only operations
# whose effect on the data tensor is known are accepted; everything else is
# refused, naming the node. Nothing from the file is executed.

_PLUMBING_OPS = {"Constant", "Identity", "Cast", "Shape", "Gather", "Unsqueeze", "Squeeze",
                 "Concat", "Slice", "Range", "Less", "Greater", "ConstantOfShape", "Expand",
                 "Reshape", "Transpose", "Where"}
_DATA_OPS = {"LSTM", "Transpose", "Reshape", "Squeeze", "MatMul", "Add", "Where", "Identity"}
_ZERO_PRESERVING = {"Identity", "Cast", "Slice", "Expand", "Reshape", "Unsqueeze", "Squeeze",
                    "Transpose"}
_LSTM_ATTRS = {"hidden_size", "direction", "activations", "layout", "input_forget", "clip",
               "activation_alpha", "activation_beta"}


class _Data:
    """The data tensor: axis labels, sizes (ints or 'x0'/'x1'/'I') and the
    stage reached: ('input',), ('Y', k), ('out', k), ('matmul',), ('head',)."""

    def __init__(self, axes, dims, stage):
        self.axes, self.dims, self.stage = tuple(axes), tuple(dims), stage

    def permuted(self, perm, stage=None):
        return _Data([self.axes[p] for p in perm], [self.dims[p] for p in perm], stage or self.stage)


class _Zeros:
    """A float tensor known to be all zeros (shape unknown)."""


def _is_zeros(v):
    """A tensor known to be all float zeros."""
    return isinstance(v, _Zeros) or (isinstance(v, np.ndarray) and v.dtype.kind == "f"
                                     and not np.any(v))


class _Dynamic:
    """An integer/bool tensor computed at run time from shapes or lengths."""

    def __init__(self, uses_lengths):
        self.uses_lengths = uses_lengths


class _Lengths(_Dynamic):
    """The graph's lengths input (possibly cast)."""

    def __init__(self):
        super().__init__(True)


class _Unused:
    """An output that lstmx cannot produce (Y_h, Y_c)."""

    def __init__(self, what):
        self.what = what


def _refuse(node, why):
    label = f"node {node.name!r} ({node.op_type})" if node.name else f"a {node.op_type} node"
    raise ValueError(f"from_onnx: {label}: {why}")


def _attrs(node):
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constant_value(node):
    from onnx import numpy_helper
    attrs = _attrs(node)
    if "value" in attrs:
        return numpy_helper.to_array(attrs["value"])
    for key, dt in (("value_float", np.float32), ("value_floats", np.float32),
                    ("value_int", np.int64), ("value_ints", np.int64)):
        if key in attrs:
            return np.array(attrs[key], dt)
    _refuse(node, f"Constant with attribute {sorted(attrs)} is not supported")


def _np_dtype(to):
    from onnx import helper
    return helper.tensor_dtype_to_np_dtype(to)


def _fold(node, args):
    """Evaluate an integer/constant plumbing op on NumPy arrays."""
    op, a = node.op_type, _attrs(node)
    if op == "Identity":
        return args[0]
    if op == "Cast":
        return args[0].astype(_np_dtype(a["to"]))
    if op == "Shape":
        return np.array(args[0].shape, np.int64)
    if op == "Gather":
        return np.take(args[0], args[1], axis=a.get("axis", 0))
    if op in ("Unsqueeze", "Squeeze"):
        axes = a["axes"] if "axes" in a else (args[1].tolist() if len(args) > 1 and args[1] is not None else None)
        if op == "Squeeze":
            return np.squeeze(args[0], axis=None if axes is None else tuple(axes))
        out = args[0]
        rank = out.ndim + len(axes)
        for ax in sorted(ax % rank for ax in axes):
            out = np.expand_dims(out, ax)
        return out
    if op == "Concat":
        return np.concatenate(args, axis=a["axis"])
    if op == "Slice":
        data, starts, ends = args[0], args[1], args[2]
        axes = args[3] if len(args) > 3 and args[3] is not None else np.arange(len(starts))
        steps = args[4] if len(args) > 4 and args[4] is not None else np.ones(len(starts), np.int64)
        index = [slice(None)] * data.ndim
        for s, e, ax, st in zip(starts, ends, axes, steps):
            n = data.shape[ax]
            e = max(min(int(e), n), -n - 1) if st < 0 else int(min(e, n))
            index[ax] = slice(int(s), e, int(st))
        return data[tuple(index)]
    if op == "Range":
        return np.arange(args[0], args[1], args[2]).astype(args[0].dtype)
    if op == "Less":
        return args[0] < args[1]
    if op == "Greater":
        return args[0] > args[1]
    if op == "ConstantOfShape":
        value = _constant_value(node) if "value" in a else np.zeros(1, np.float32)
        return np.full(tuple(args[0]), value.ravel()[0], value.dtype)
    if op == "Expand":
        return args[0] * np.ones(tuple(args[1]), args[0].dtype)
    if op == "Reshape":
        shape = [args[0].shape[i] if s == 0 else s for i, s in enumerate(args[1].tolist())]
        return args[0].reshape(shape)
    if op == "Transpose":
        return np.transpose(args[0], a.get("perm"))
    if op == "Where":
        return np.where(args[0], args[1], args[2])
    _refuse(node, "cannot be evaluated")


class _OnnxReader:
    def __init__(self, model):
        self.graph = model.graph
        self.values = {}         # tensor name -> abstract value
        self.producer = {}       # tensor name -> node
        self.input_dims = [None] * 3   # the input's declared (T, N, I) or (N, T, I)
        self.lengths_name = None
        self.layers = []         # (W, R, B, P, uses_lengths) per LSTM, ONNX layout
        self.time_axis = None    # 'x0' or 'x1'
        self.head_w = self.head_b = None
        self.mask = None         # (cond name, data at the Where) to verify

    # -- values

    def value(self, node, name):
        if name == "":
            return None
        if name not in self.values:
            _refuse(node, f"input {name!r} is not produced by any node, input or initializer")
        v = self.values[name]
        if isinstance(v, _Unused):
            _refuse(node, f"uses {v.what}, which lstmx does not produce; only the LSTM output "
                          f"sequence Y may be used")
        return v

    def const(self, node, name, what):
        v = self.value(node, name)
        if isinstance(v, _Zeros):
            _refuse(node, f"{what} ({name!r}) must be a constant (initializer or Constant)")
        if not isinstance(v, np.ndarray):
            _refuse(node, f"{what} ({name!r}) must be a constant (initializer or Constant), "
                          f"not computed at run time")
        return v

    # -- the walk

    def read(self):
        from onnx import TensorProto, numpy_helper
        g = self.graph
        for t in g.initializer:
            self.values[t.name] = numpy_helper.to_array(t)
        if len(g.sparse_initializer):
            raise ValueError("from_onnx: sparse initializers are not supported")
        for inp in g.input:
            if inp.name in self.values:
                continue    # an initializer listed as input (IR < 4)
            ttype = inp.type.tensor_type
            if ttype.elem_type in (TensorProto.INT32, TensorProto.INT64):
                if self.lengths_name is not None:
                    raise ValueError(f"from_onnx: graph inputs {self.lengths_name!r} and {inp.name!r} "
                                     f"are both integer; expected one lengths input at most")
                self.lengths_name = inp.name
                self.values[inp.name] = _Lengths()
            elif ttype.elem_type in (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16):
                if any(isinstance(v, _Data) for v in self.values.values()):
                    raise ValueError(f"from_onnx: more than one float graph input "
                                     f"(second: {inp.name!r}); expected one input sequence")
                dims = [d.dim_value if d.HasField("dim_value") else None for d in ttype.shape.dim]
                if ttype.HasField("shape") and len(dims) != 3:
                    raise ValueError(f"from_onnx: input {inp.name!r} has rank {len(dims)}, "
                                     f"expected 3 ((T, N, I) or (N, T, I))")
                self.input_dims = dims if len(dims) == 3 else [None] * 3   # no shape declared
                self.values[inp.name] = _Data(("x0", "x1", "F"), ("x0", "x1", "I"), ("input",))
            else:
                raise ValueError(f"from_onnx: graph input {inp.name!r} has an unsupported element type "
                                 f"{TensorProto.DataType.Name(ttype.elem_type)}")
        if not any(isinstance(v, _Data) for v in self.values.values()):
            raise ValueError("from_onnx: the graph has no float input sequence")
        for node in g.node:
            self.visit(node)
        return self.finish()

    def visit(self, node):
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            _refuse(node, f"operators of domain {node.domain!r} are not supported")
        if op not in _PLUMBING_OPS | _DATA_OPS:
            _refuse(node, "this operator cannot be mapped onto an lstmx network")
        for out in node.output:
            self.producer[out] = node
        args = [self.value(node, name) for name in node.input]
        if op == "LSTM":
            return self.lstm(node, args)
        data = [i for i, v in enumerate(args) if isinstance(v, _Data)]
        if data:
            return self.data_op(node, args, data)
        if op == "Constant":
            result = _constant_value(node)
        elif op in ("MatMul", "Add"):
            _refuse(node, f"{op} off the data path is not supported")
        elif all(v is None or isinstance(v, np.ndarray) for v in args):
            result = _fold(node, args)
        elif op == "ConstantOfShape":
            value = _constant_value(node) if "value" in _attrs(node) else np.zeros(1)
            result = _Zeros() if not np.any(value) else _Dynamic(False)
        elif op in _ZERO_PRESERVING and _is_zeros(args[0]):
            result = _Zeros()
        elif op == "Cast" and isinstance(args[0], _Lengths):
            result = _Lengths()
        else:
            result = _Dynamic(any(isinstance(v, _Dynamic) and v.uses_lengths for v in args))
        self.values[node.output[0]] = result

    def data_op(self, node, args, data):
        op, a = node.op_type, _attrs(node)
        if op == "Shape":
            self.values[node.output[0]] = _Dynamic(False)
            return
        if op == "Where":
            cond, x, zero = args
            if data != [1] or not isinstance(cond, _Dynamic) or not cond.uses_lengths \
                    or not isinstance(zero, np.ndarray) or np.any(zero):
                _refuse(node, "only Where(mask from lengths, y, 0), zeroing padded steps, is supported")
            if self.mask is not None:
                _refuse(node, "a second padding mask")
            self.mask = (node.input[0], x)
            self.values[node.output[0]] = x
            return
        # The data tensor must be the first input (or either side of the head's Add).
        if op not in _DATA_OPS or not (data == [0] or (op == "Add" and data == [1])):
            _refuse(node, "this operation on the data path cannot be mapped onto lstmx")
        x = args[data[0]]
        if op == "Identity":
            out = x
        elif op == "Transpose":
            perm = list(a.get("perm", range(len(x.axes) - 1, -1, -1)))
            if sorted(perm) != list(range(len(x.axes))):
                _refuse(node, f"perm={perm} is not a permutation of the {len(x.axes)} axes")
            out = x.permuted(perm)
        elif op == "Squeeze":
            axes = a["axes"] if "axes" in a else (
                self.const(node, node.input[1], "axes").tolist() if len(args) > 1 else None)
            if axes is None:
                _refuse(node, "Squeeze without axes is not supported")
            axes = sorted(ax % len(x.axes) for ax in axes)
            if not (isinstance(x.stage, tuple) and x.stage[0] == "Y") or \
                    any(x.axes[ax] != "D" or x.dims[ax] != 1 for ax in axes):
                _refuse(node, "only squeezing the direction axis of a unidirectional LSTM's Y is supported")
            keep = [i for i in range(len(x.axes)) if i not in axes]
            out = _Data([x.axes[i] for i in keep], [x.dims[i] for i in keep], x.stage)
            out = self.merged(node, out)
        elif op == "Reshape":
            shape = self.const(node, node.input[1], "shape").tolist()
            if a.get("allowzero", 0):
                _refuse(node, "Reshape with allowzero=1 is not supported")
            if len(x.axes) == 4 and x.axes[2:] == ("D", "H") and x.axes[0] in ("x0", "x1"):
                width = x.dims[2] * x.dims[3]
                if shape not in ([0, 0, -1], [0, 0, width]):
                    _refuse(node, f"Reshape to {shape} of [T, N, D, H]; expected [0, 0, -1]")
                out = _Data(x.axes[:2] + ("F",), x.dims[:2] + (width,), x.stage)
                out = self.merged(node, out)
            elif len(x.axes) == 3 and x.axes[2] == "F" and x.axes[0] in ("x0", "x1") \
                    and isinstance(x.dims[2], int) and shape in ([0, 0, -1], [0, 0, x.dims[2]]):
                out = x
            else:
                _refuse(node, f"Reshape to {shape} of a tensor with axes {x.axes} cannot be mapped")
        elif op == "MatMul":
            if data != [0] or x.stage[0] != "out" or x.axes[2] != "F":
                _refuse(node, "MatMul is supported only as the head, on the last LSTM's output")
            w = self.const(node, node.input[1], "the head's weight")
            if w.ndim != 2 or w.shape[0] != x.dims[2]:
                _refuse(node, f"head weight of shape {w.shape}; expected ({x.dims[2]}, O)")
            self.head_w = w
            out = _Data(x.axes, x.dims[:2] + (w.shape[1],), ("matmul",))
        elif op == "Add":
            if x.stage != ("matmul",):
                _refuse(node, "Add is supported only as the head's bias, right after its MatMul")
            b = self.const(node, node.input[1 - data[0]], "the head's bias")
            O = x.dims[2]
            if b.size != O or (b.ndim > 1 and b.shape[-1] != O):
                _refuse(node, f"head bias of shape {b.shape}; expected ({O},)")
            self.head_b = b.reshape(O)
            out = _Data(x.axes, x.dims, ("head",))
        else:
            _refuse(node, "this operation on the data path cannot be mapped onto lstmx")
        self.values[node.output[0]] = out
        for extra in node.output[1:]:
            self.values[extra] = _Unused(f"output {extra!r} of {op}")

    def merged(self, node, x):
        """After merging an LSTM's directions: [T, N, D*H] -> stage ('out', k)."""
        if x.axes[2:] in (("H",), ("F",)):
            if x.axes[:2] != (self.time_axis, "x1" if self.time_axis == "x0" else "x0"):
                _refuse(node, "the merged LSTM output must be [T, N, D*H] (time-major)")
            return _Data(x.axes[:2] + ("F",), x.dims, ("out", x.stage[1]))
        return x

    def lstm(self, node, args):
        a = _attrs(node)
        k = len(self.layers)
        unknown = set(a) - _LSTM_ATTRS
        if unknown:
            _refuse(node, f"unknown attributes {sorted(unknown)}")
        for name in ("clip", "activation_alpha", "activation_beta"):
            if name in a:
                _refuse(node, f"attribute {name} is not supported (lstmx has no cell clipping "
                              f"or activation parameters)")
        if a.get("input_forget", 0):
            _refuse(node, "input_forget=1 (coupled input and forget gates) is not supported")
        if a.get("layout", 0):
            _refuse(node, "layout=1 (batch-major LSTM tensors) is not supported; expected layout=0")
        direction = a.get("direction", b"forward")
        direction = direction.decode() if isinstance(direction, bytes) else direction
        if direction not in ("forward", "bidirectional"):
            _refuse(node, f"direction={direction!r} is not supported; expected 'forward' or 'bidirectional'")
        D = 2 if direction == "bidirectional" else 1
        if "activations" in a:
            acts = [s.decode() if isinstance(s, bytes) else s for s in a["activations"]]
            if [s.lower() for s in acts] != ["sigmoid", "tanh", "tanh"] * D:
                _refuse(node, f"activations={acts} are not supported; only the default "
                              f"Sigmoid, Tanh, Tanh")
        x = args[0]
        if not isinstance(x, _Data):
            _refuse(node, "its input X is not the model's input sequence")
        expected = ("input",) if k == 0 else ("out", k - 1)
        if x.stage != expected or len(x.axes) != 3 or x.axes[2] != "F" or \
                set(x.axes[:2]) != {"x0", "x1"}:
            _refuse(node, f"its input X must be the {'model input' if k == 0 else 'previous LSTM output'}"
                          f" as [T, N, features]")
        if k == 0:
            self.time_axis = x.axes[0]
        elif x.axes[0] != self.time_axis:
            _refuse(node, "its input X has the batch axis first; expected [T, N, features]")
        W = self.const(node, node.input[1], "W")
        R = self.const(node, node.input[2], "R")
        H = a.get("hidden_size")
        if W.ndim != 3 or W.shape[0] != D or W.shape[1] % 4:
            _refuse(node, f"W has shape {W.shape}; expected [{D}, 4*hidden_size, input_size]")
        H = W.shape[1] // 4 if H is None else H
        I = W.shape[2]
        if W.shape[1] != 4 * H or R.shape != (D, 4 * H, H):
            _refuse(node, f"W {W.shape} / R {R.shape} do not match hidden_size={H} and direction={direction}")
        if W.dtype not in (np.float32, np.float64):
            _refuse(node, f"W has dtype {W.dtype}; lstmx runs float32 or float64")
        B = self.const(node, node.input[3], "B") if len(args) > 3 and args[3] is not None else None
        if B is not None and B.shape != (D, 8 * H):
            _refuse(node, f"B has shape {B.shape}; expected [{D}, {8 * H}]")
        seq_lens = args[4] if len(args) > 4 else None
        if seq_lens is not None and not isinstance(seq_lens, _Lengths):
            _refuse(node, "sequence_lens must be the graph's lengths input")
        for i, what in ((5, "initial_h"), (6, "initial_c")):
            v = args[i] if len(args) > i else None
            if v is not None and not isinstance(v, _Zeros) and not \
                    (isinstance(v, np.ndarray) and not np.any(v)):
                _refuse(node, f"{what} must be absent or zeros (lstmx starts from a zero state; "
                              f"pass state= to predict instead)")
        P = self.const(node, node.input[7], "P") if len(args) > 7 and args[7] is not None else None
        if P is not None and P.shape != (D, 3 * H):
            _refuse(node, f"P has shape {P.shape}; expected [{D}, {3 * H}]")
        if k > 0:
            W0 = self.layers[0][0]
            if W0.shape[:2] != (D, 4 * H):
                _refuse(node, "all layers must share hidden_size and direction")
            if I != D * H:
                _refuse(node, f"W has input size {I}; expected {D * H} (the previous layer's output)")
        else:
            declared = self.input_dims[2]
            if declared is not None and declared != I:
                _refuse(node, f"W has input size {I}, but the graph input has {declared} features")
        self.layers.append((W, R, B, P, seq_lens is not None))
        T, N = x.axes[0], x.axes[1]
        self.values[node.output[0]] = _Data((T, "D", N, "H"), (x.dims[0], D, x.dims[1], H), ("Y", k))
        for extra in node.output[1:]:
            if extra:
                self.values[extra] = _Unused(f"the final state {extra!r}")

    def finish(self):
        g = self.graph
        if not self.layers:
            raise ValueError("from_onnx: the graph has no LSTM node")
        if len(g.output) != 1:
            raise ValueError(f"from_onnx: the graph has {len(g.output)} outputs "
                             f"({', '.join(o.name for o in g.output)}); expected one, y")
        out_name = g.output[0].name
        y = self.values.get(out_name)
        if isinstance(y, _Unused):
            raise ValueError(f"from_onnx: the graph outputs {y.what}; lstmx produces only y")
        L = len(self.layers)
        if not isinstance(y, _Data) or y.stage not in (("out", L - 1), ("matmul",), ("head",)) \
                or y.axes != ("x0", "x1", "F"):
            raise ValueError(f"from_onnx: output {out_name!r} is not the last LSTM's output "
                             f"(or the head on it) in the input's layout")
        uses = {layer[4] for layer in self.layers}
        if len(uses) > 1:
            raise ValueError("from_onnx: only some LSTM nodes take sequence_lens; all or none must")
        with_lengths = uses == {True}
        if self.lengths_name is not None and not with_lengths:
            raise ValueError(f"from_onnx: input {self.lengths_name!r} is not the LSTMs' sequence_lens")
        has_head = y.stage != ("out", L - 1)
        if with_lengths and has_head and (self.mask is None or self.mask[1].stage != y.stage):
            raise ValueError("from_onnx: with sequence_lens, the head's output at padded steps "
                             "is its bias, not zero as in lstmx; expected a Where masking them "
                             "after the head")
        if self.mask is not None:
            self.check_mask()
        return has_head

    def check_mask(self):
        """Evaluate the Where's condition for concrete sizes: it must be t < lengths[n]."""
        cond_name, data = self.mask
        I = self.layers[0][0].shape[2]
        for T, N, lengths in ((5, 3, [4, 1, 5]), (7, 2, [7, 3])):
            sizes = {"I": I, self.time_axis: T, ("x1" if self.time_axis == "x0" else "x0"): N}
            lengths = np.array(lengths, np.int32 if self.lengths_dtype() == np.int32 else np.int64)
            cache = {}

            def ev(name):
                if name == "":
                    return None
                if name in cache:
                    return cache[name]
                v = self.values[name]
                if isinstance(v, np.ndarray):
                    r = v
                elif isinstance(v, _Lengths) and name == self.lengths_name:
                    r = lengths
                elif isinstance(v, _Data):
                    raise _NotMask
                else:
                    node = self.producer[name]
                    if node.op_type == "Shape" and isinstance(self.values[node.input[0]], _Data):
                        d, a = self.values[node.input[0]], _attrs(node)
                        r = np.array([sizes[s] if isinstance(s, str) else s for s in d.dims], np.int64)
                        r = r[a.get("start", 0):a.get("end", len(r))]
                    else:
                        r = _fold(node, [ev(i) for i in node.input])
                cache[name] = r
                return r

            try:
                cond = np.asarray(ev(cond_name))
                shape = tuple(sizes[s] if isinstance(s, str) else s for s in data.dims)
                t_axis = data.axes.index(self.time_axis)
                n_axis = 1 - t_axis
                t = np.arange(T).reshape([-1 if i == t_axis else 1 for i in range(3)])
                n = lengths.reshape([-1 if i == n_axis else 1 for i in range(3)])
                expected = np.broadcast_to(t < n, shape)
                ok = cond.dtype == bool and np.array_equal(np.broadcast_to(cond, shape), expected)
            except (_NotMask, ValueError, KeyError, IndexError, TypeError):
                ok = False
            if not ok:
                raise ValueError("from_onnx: the Where before the output does not zero exactly the "
                                 "padded steps (t >= lengths[n])")

    def lengths_dtype(self):
        from onnx import TensorProto
        for inp in self.graph.input:
            if inp.name == self.lengths_name:
                return np.int32 if inp.type.tensor_type.elem_type == TensorProto.INT32 else np.int64


class _NotMask(Exception):
    pass


def from_onnx(path):
    """Load an ONNX model of stacked ``LSTM`` operators (+ MatMul/Add head)
    as an :class:`lstmx.LSTM`.

    Reads models written by :func:`to_onnx` and by ``torch.onnx.export`` of an
    ``nn.LSTM`` (+ ``nn.Linear``) with the TorchScript exporter
    (``dynamo=False``). The file is parsed with ``onnx.load`` and its
    initializers read with ``onnx.numpy_helper``: nothing is executed.

    Accepted: one float input (T, N, I) or (N, T, I) (a Transpose before the
    first LSTM means ``batch_first``); an optional int32/int64 ``lengths``
    input used as every LSTM's ``sequence_lens``; one ``LSTM`` per layer,
    all with the same ``hidden_size`` and ``direction`` ("forward" or
    "bidirectional"), default activations, ``layout=0``, no ``clip``, no
    ``input_forget``, zero or absent initial states; between layers the
    Transpose + Reshape (or Squeeze) that turn Y [T, D, N, H] into
    [T, N, D*H]; an optional head MatMul (D*H, O) + Add (O,), masked with a
    Where on t < lengths[n] when lengths are used; one output. Anything
    else is refused with a ValueError naming the node.

    Parameters
    ----------
    path : str, os.PathLike or onnx.ModelProto

    Returns
    -------
    lstmx.LSTM
        dtype of the LSTM weights; ``peephole=True`` if any layer has P
        (layers without get zero peepholes); the two ONNX biases summed.
    """
    import onnx

    if isinstance(path, onnx.ModelProto):
        model = path
    elif isinstance(path, (str, bytes, os.PathLike)):
        model = onnx.load(path)
    else:
        raise TypeError(f"path: expected a file path or an onnx.ModelProto, got {type(path).__name__}")
    reader = _OnnxReader(model)
    has_head = reader.read()
    W0 = reader.layers[0][0]
    D, H, I = W0.shape[0], W0.shape[1] // 4, W0.shape[2]
    dtype = W0.dtype
    peephole = any(layer[3] is not None for layer in reader.layers)
    output_size = reader.head_w.shape[1] if has_head else None
    net = LSTM(I, H, num_layers=len(reader.layers), bidirectional=D == 2, peephole=peephole,
               output_size=output_size, dtype=dtype, seed=0,
               batch_first=reader.time_axis == "x1")
    for layer, (W, R, B, P, _) in enumerate(reader.layers):
        for d in range(D):
            w_x, w_h, bias, peep = net._packed[layer * D + d]
            w_x[...] = _gate_blocks(W[d], _ONNX_FOR_OURS, H)
            w_h[...] = _gate_blocks(R[d], _ONNX_FOR_OURS, H)
            if B is None:
                bias[...] = 0
            else:
                b = B[d].astype(dtype)
                bias[...] = _gate_blocks(b[:4 * H] + b[4 * H:], _ONNX_FOR_OURS, H)
            if peep is not None:
                peep[...] = 0 if P is None else _gate_blocks(P[d], _PEEP_SWAP, H)
    if has_head:
        net.params[FC_WEIGHTS][...] = reader.head_w.T
        net.params[FC_BIASES][...] = 0 if reader.head_b is None else reader.head_b
    return net
