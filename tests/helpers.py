"""Helpers shared by the tests: building small nets, random inputs, running the reference."""

from dataclasses import dataclass

import numpy as np
import pytest

import lstmx
from reference import reference_forward

# tests of a recurrence split between two threads need _cell.c's barrier
needs_split = pytest.mark.skipif(not lstmx._lstm.can_split(), reason="no barrier in this build")

# Absolute tolerances against the float64 reference run on the net's own weights.
FORWARD_ATOL = {np.float64: 1e-10, np.float32: 1e-5}
DTYPES = [np.float64, np.float32]
DTYPE_IDS = ["f64", "f32"]


def atol_for(dtype):
    return FORWARD_ATOL[np.dtype(dtype).type]


@dataclass(frozen=True)
class Arch:
    """Hyperparameters of a small network; ``id`` is a readable pytest id."""

    input_size: int = 3
    hidden_size: int = 4
    num_layers: int = 1
    bidirectional: bool = False
    peephole: bool = True
    output_size: int | None = None

    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    @property
    def id(self):
        return "-".join([
            f"L{self.num_layers}",
            "bi" if self.bidirectional else "uni",
            "peep" if self.peephole else "nopeep",
            f"head{self.output_size}" if self.output_size is not None else "nohead",
        ])

    def make(self, dtype=np.float64, seed=0, batch_first=False):
        import lstmx

        return lstmx.LSTM(
            self.input_size, self.hidden_size, num_layers=self.num_layers,
            bidirectional=self.bidirectional, peephole=self.peephole,
            output_size=self.output_size, dtype=dtype, seed=seed,
            batch_first=batch_first,
        )


def all_archs(layers=(1, 2, 3), input_size=3, hidden_size=4, output_size=2):
    return [
        Arch(input_size, hidden_size, L, bi, peep, head)
        for L in layers
        for bi in (False, True)
        for peep in (True, False)
        for head in (None, output_size)
    ]


def params64(net):
    """A float64 copy of the net's parameters, by name."""
    return {name: np.array(view, dtype=np.float64) for name, view in net.params.items()}


def out_width(net):
    return net.output_size if net.output_size is not None else net.num_directions * net.hidden_size


def random_x(rng, T, N, I, dtype=np.float64):
    return rng.standard_normal((T, N, I)).astype(dtype)


def random_state(rng, net, N, scale=0.5):
    """A random (h0, c0), each (L*D, N, H), in the net's dtype."""
    shape = (net.num_layers * net.num_directions, N, net.hidden_size)
    h0 = (scale * rng.standard_normal(shape)).astype(net.dtype)
    c0 = (scale * rng.standard_normal(shape)).astype(net.dtype)
    return h0, c0


def run_reference(net, x, lengths=None, state=None):
    """The reference on the net's own weights (as float64), in the net's layout.

    ``x`` and ``state`` are given exactly as they would be passed to the net
    (time-major or batch-first; batched or unbatched); the results come back
    in the same layout as the net returns them.
    """
    x = np.asarray(x, dtype=np.float64)
    unbatched = x.ndim == 2
    if unbatched:
        x3 = x[:, None, :]
    elif net.batch_first:
        x3 = x.transpose(1, 0, 2)
    else:
        x3 = x
    h0 = c0 = None
    if state is not None:
        h0, c0 = (np.asarray(s, dtype=np.float64) for s in state)
        if unbatched:
            h0, c0 = h0[:, None, :], c0[:, None, :]
    y, (h_n, c_n) = reference_forward(
        params64(net), x3, num_layers=net.num_layers, bidirectional=net.bidirectional,
        peephole=net.peephole, has_head=net.output_size is not None,
        lengths=lengths, h0=h0, c0=c0,
    )
    if unbatched:
        return y[:, 0, :], (h_n[:, 0, :], c_n[:, 0, :])
    if net.batch_first:
        y = y.transpose(1, 0, 2)
    return y, (h_n, c_n)


def padding_mask(lengths, T):
    """Boolean (T, N): True at valid steps."""
    lengths = np.asarray(lengths)
    return np.arange(T)[:, None] < lengths[None, :]


# ---------------------------------------------------------------- torch ----

def torch_modules_from_params(params, *, input_size, hidden_size, num_layers, bidirectional,
                              output_size=None, dtype=np.float64, bias_split_rng=None):
    """torch.nn.LSTM (+ Linear head) holding the given seed-000-named parameters.

    torch stacks the gates of one (layer, direction) as row blocks i, f, g, o of
    weight_ih_l{k}[_reverse] (4H, I_k) and weight_hh (4H, H), and keeps two
    biases whose sum is ours.  With ``bias_split_rng`` the bias is split at
    random between bias_ih and bias_hh, so only their sum matters.
    """
    import torch

    tdtype = torch.float64 if np.dtype(dtype) == np.float64 else torch.float32
    lstm = torch.nn.LSTM(input_size, hidden_size, num_layers=num_layers,
                         bidirectional=bidirectional, dtype=tdtype)
    dirs = ("fw", "bw") if bidirectional else ("fw",)
    with torch.no_grad():
        for layer in range(1, num_layers + 1):
            for direction in dirs:
                suffix = f"_l{layer - 1}" + ("_reverse" if direction == "bw" else "")
                tail = f"{direction}_layer{layer}"
                W_ih = np.vstack([params[f"W_{g}_x_{tail}"] for g in "ifco"])
                W_hh = np.vstack([params[f"W_{g}_h_{tail}"] for g in "ifco"])
                bias = np.concatenate([np.ravel(params[f"b_{g}_{tail}"]) for g in "ifco"])
                if bias_split_rng is None:
                    bias_hh = np.zeros_like(bias)
                else:
                    bias_hh = bias_split_rng.uniform(-1, 1, size=bias.shape)
                bias_ih = bias - bias_hh
                for name, value in [("weight_ih", W_ih), ("weight_hh", W_hh),
                                    ("bias_ih", bias_ih), ("bias_hh", bias_hh)]:
                    getattr(lstm, name + suffix).copy_(torch.from_numpy(np.asarray(value, dtype=dtype)))
    head = None
    if output_size is not None:
        head = torch.nn.Linear(len(dirs) * hidden_size, output_size, dtype=tdtype)
        with torch.no_grad():
            head.weight.copy_(torch.from_numpy(np.asarray(params["Fully_connected_layerweights"], dtype=dtype)))
            head.bias.copy_(torch.from_numpy(np.ravel(params["Fully_connected_layerbiases"]).astype(dtype)))
    return lstm, head


def torch_run(lstm, head, x, lengths=None, h0=None, c0=None):
    """Run torch modules on time-major numpy ``x`` (T, N, I); returns torch tensors.

    Padded steps give zero outputs, also through the head (masked afterwards).
    Returns (y, h_n, c_n, x_tensor, h0_tensor, c0_tensor); the inputs require grad.
    """
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    T, N, _ = x.shape
    dtype = next(lstm.parameters()).dtype
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    hx = None
    h0t = c0t = None
    if h0 is not None:
        h0t = torch.tensor(h0, dtype=dtype, requires_grad=True)
        c0t = torch.tensor(c0, dtype=dtype, requires_grad=True)
        hx = (h0t, c0t)
    if lengths is None:
        out, (h_n, c_n) = lstm(xt, hx)
    else:
        packed = pack_padded_sequence(xt, torch.as_tensor(np.asarray(lengths), dtype=torch.int64),
                                      enforce_sorted=False)
        out_packed, (h_n, c_n) = lstm(packed, hx)
        out, _ = pad_packed_sequence(out_packed, total_length=T)
    y = out
    if head is not None:
        y = head(out)
        if lengths is not None:
            mask = torch.as_tensor(padding_mask(lengths, T), dtype=dtype)
            y = y * mask[:, :, None]
    return y, h_n, c_n, xt, h0t, c0t


def torch_grads_by_name(lstm, head, num_layers, bidirectional):
    """torch's parameter gradients, unpacked into seed-000 names (bias: ih grad)."""
    H = lstm.hidden_size
    dirs = ("fw", "bw") if bidirectional else ("fw",)
    grads = {}
    for layer in range(1, num_layers + 1):
        for direction in dirs:
            suffix = f"_l{layer - 1}" + ("_reverse" if direction == "bw" else "")
            tail = f"{direction}_layer{layer}"
            g_ih = getattr(lstm, "weight_ih" + suffix).grad.numpy()
            g_hh = getattr(lstm, "weight_hh" + suffix).grad.numpy()
            g_b = getattr(lstm, "bias_ih" + suffix).grad.numpy()
            for k, g in enumerate("ifco"):
                grads[f"W_{g}_x_{tail}"] = g_ih[k * H:(k + 1) * H]
                grads[f"W_{g}_h_{tail}"] = g_hh[k * H:(k + 1) * H]
                grads[f"b_{g}_{tail}"] = g_b[None, k * H:(k + 1) * H]
    if head is not None:
        grads["Fully_connected_layerweights"] = head.weight.grad.numpy()
        grads["Fully_connected_layerbiases"] = head.bias.grad.numpy()[None, :]
    return grads
