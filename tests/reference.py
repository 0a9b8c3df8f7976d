"""A plain NumPy reference for lstmx, written from DESIGN.md section 1.

Nothing here is fast or clever on purpose: one sequence, one step, one
matrix-vector product at a time, so that each line can be checked against
the equations by eye.  It knows nothing about lstmx's internals; it only
reads parameters by their seed-000 names.

    i_t = sigma(W_ix x_t + W_ih h_{t-1} + p_i * c_{t-1} + b_i)
    f_t = sigma(W_fx x_t + W_fh h_{t-1} + p_f * c_{t-1} + b_f)
    g_t = tanh (W_cx x_t + W_ch h_{t-1}               + b_c)
    c_t = f_t * c_{t-1} + i_t * g_t
    o_t = sigma(W_ox x_t + W_oh h_{t-1} + p_o * c_t     + b_o)   # c_t, not c_{t-1}
    h_t = o_t * tanh(c_t)
"""

import numpy as np

GATES = ("i", "f", "c", "o")
PEEPHOLE_GATES = ("i", "f", "o")


def directions(bidirectional):
    return ("fw", "bw") if bidirectional else ("fw",)


def sigmoid(z):
    # Same function as 1 / (1 + exp(-z)), without overflow for large |z|.
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def cell_params(params, direction, layer, peephole):
    """The parameters of one (layer, direction), as 1-D / 2-D float64 arrays."""
    suffix = f"{direction}_layer{layer}"
    cell = {}
    for g in GATES:
        cell[f"W_{g}_x"] = np.asarray(params[f"W_{g}_x_{suffix}"], dtype=np.float64)
        cell[f"W_{g}_h"] = np.asarray(params[f"W_{g}_h_{suffix}"], dtype=np.float64)
        cell[f"b_{g}"] = np.asarray(params[f"b_{g}_{suffix}"], dtype=np.float64).reshape(-1)
    for g in PEEPHOLE_GATES:
        if peephole:
            cell[f"p_{g}"] = np.asarray(
                params[f"peephole_{g}_c_{suffix}"], dtype=np.float64
            ).reshape(-1)
        else:
            cell[f"p_{g}"] = np.zeros_like(cell["b_i"])
    return cell


def cell_step(cell, x_t, h_prev, c_prev):
    """One step of the (peephole) LSTM cell for one sequence; vectors in, vectors out."""
    i_t = sigmoid(cell["W_i_x"] @ x_t + cell["W_i_h"] @ h_prev + cell["p_i"] * c_prev + cell["b_i"])
    f_t = sigmoid(cell["W_f_x"] @ x_t + cell["W_f_h"] @ h_prev + cell["p_f"] * c_prev + cell["b_f"])
    g_t = np.tanh(cell["W_c_x"] @ x_t + cell["W_c_h"] @ h_prev + cell["b_c"])
    c_t = f_t * c_prev + i_t * g_t
    o_t = sigmoid(cell["W_o_x"] @ x_t + cell["W_o_h"] @ h_prev + cell["p_o"] * c_t + cell["b_o"])
    h_t = o_t * np.tanh(c_t)
    return h_t, c_t


def reference_forward(params, x, *, num_layers, bidirectional, peephole, has_head,
                      lengths=None, h0=None, c0=None):
    """Run the network on time-major ``x`` (T, N, I).

    Returns ``(y, (h_n, c_n))`` with y (T, N, O) if ``has_head`` else
    (T, N, D*H), and h_n, c_n (L*D, N, H) ordered layer-major then direction.
    Padded steps (t >= lengths[n]) give zero outputs; the backward direction
    reads each sequence reversed within its own length; the final state of a
    sequence is its state after its own last processed step.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3:
        raise ValueError("reference_forward wants x of shape (T, N, I)")
    T, N, _ = x.shape
    dirs = directions(bidirectional)
    D = len(dirs)
    H = np.asarray(params["W_i_h_fw_layer1"]).shape[0]
    L = num_layers

    if lengths is None:
        lengths = np.full(N, T, dtype=np.int64)
    lengths = [int(l) for l in lengths]
    assert len(lengths) == N and all(1 <= l <= T for l in lengths)

    h0 = np.zeros((L * D, N, H)) if h0 is None else np.asarray(h0, dtype=np.float64)
    c0 = np.zeros((L * D, N, H)) if c0 is None else np.asarray(c0, dtype=np.float64)
    h_n = np.zeros((L * D, N, H))
    c_n = np.zeros((L * D, N, H))

    layer_input = x
    for layer in range(1, L + 1):
        layer_output = np.zeros((T, N, D * H))
        for d, direction in enumerate(dirs):
            cell = cell_params(params, direction, layer, peephole)
            state_index = (layer - 1) * D + d
            for n in range(N):
                h = h0[state_index, n].copy()
                c = c0[state_index, n].copy()
                if direction == "fw":
                    steps = range(lengths[n])
                else:
                    steps = range(lengths[n] - 1, -1, -1)
                for t in steps:
                    h, c = cell_step(cell, layer_input[t, n], h, c)
                    layer_output[t, n, d * H:(d + 1) * H] = h
                h_n[state_index, n] = h
                c_n[state_index, n] = c
        layer_input = layer_output

    if has_head:
        W_fc = np.asarray(params["Fully_connected_layerweights"], dtype=np.float64)
        b_fc = np.asarray(params["Fully_connected_layerbiases"], dtype=np.float64).reshape(-1)
        y = np.zeros((T, N, W_fc.shape[0]))
        for n in range(N):
            for t in range(lengths[n]):
                y[t, n] = W_fc @ layer_input[t, n] + b_fc
    else:
        y = layer_input
    return y, (h_n, c_n)


def parameter_shapes(input_size, hidden_size, num_layers=1, bidirectional=False,
                     peephole=True, output_size=None):
    """The seed-000 names and shapes of a network with these hyperparameters."""
    dirs = directions(bidirectional)
    D = len(dirs)
    H = hidden_size
    shapes = {}
    for layer in range(1, num_layers + 1):
        I_k = input_size if layer == 1 else D * H
        for d in dirs:
            for g in GATES:
                shapes[f"W_{g}_x_{d}_layer{layer}"] = (H, I_k)
                shapes[f"W_{g}_h_{d}_layer{layer}"] = (H, H)
                shapes[f"b_{g}_{d}_layer{layer}"] = (1, H)
            if peephole:
                for g in PEEPHOLE_GATES:
                    shapes[f"peephole_{g}_c_{d}_layer{layer}"] = (1, H)
    if output_size is not None:
        shapes["Fully_connected_layerweights"] = (output_size, D * H)
        shapes["Fully_connected_layerbiases"] = (1, output_size)
    return shapes


def random_params(rng, input_size, hidden_size, num_layers=1, bidirectional=False,
                  peephole=True, output_size=None, scale=0.5):
    """Random float64 parameters by seed-000 name (for testing the reference itself)."""
    return {
        name: rng.uniform(-scale, scale, size=shape)
        for name, shape in parameter_shapes(
            input_size, hidden_size, num_layers, bidirectional, peephole, output_size
        ).items()
    }
