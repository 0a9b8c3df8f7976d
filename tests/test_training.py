"""lstmx.fit (the training loop) and ``lstmx train`` (training from files,
checkpoints, bit-exact --resume)."""
import math
import sys

import numpy as np
import pytest

import lstmx
from lstmx import cli
from lstmx.training import state_path


def delayed_copy(n, T, delay, seed):
    """x (T, n, 2): a random bit per step, one-hot; y (T, n): the bit of
    ``delay`` steps before (0 for the first steps)."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, (T, n))
    x = np.zeros((T, n, 2))
    x[..., 0], x[..., 1] = bits, 1 - bits
    y = np.zeros((T, n), np.int64)
    y[delay:] = bits[:-delay]
    return x, y


def small_task(rng, T=7, N=12, I=3, classes=3):
    x = rng.standard_normal((T, N, I))
    y = rng.integers(0, classes, (T, N))
    return x, y


def make_net(I=3, H=4, O=3, **kw):
    kw.setdefault("seed", 0)
    kw.setdefault("dtype", np.float64)
    return lstmx.LSTM(I, H, output_size=O, **kw)


# ----------------------------------------------------------------------
# learning

def test_fit_learns_delayed_copy_well_below_chance():
    # The target is the input bit of 3 steps before: uniform and independent
    # of the current input, so any network without memory has a
    # cross-entropy of at least log 2 = 0.693 (chance). Below 0.05 on
    # held-out sequences, the network must carry each bit for 3 steps.
    x, y = delayed_copy(256, 20, 3, seed=0)
    net = lstmx.LSTM(2, 8, output_size=2, seed=0)
    history = lstmx.fit(net, (x, y), optimizer=lstmx.optim.Adam(net, lr=1e-2), epochs=40,
                        batch_size=32, seed=0, progress=False)     # 320 steps
    assert len(history) == 40
    assert history[0]["loss"] > 0.6
    x_test, y_test = delayed_copy(256, 20, 3, seed=1)
    loss, _ = lstmx.losses.softmax_cross_entropy(net.predict(x_test), y_test)
    assert loss < 0.05 < math.log(2)
    accuracy = (net.predict(x_test).argmax(-1) == y_test).mean()
    assert accuracy > 0.99


def test_fit_mse_learns_a_running_sum():
    # y_t = (x_1 + ... + x_t) / 4: the loss falls far below the variance of
    # the target, the least a constant output reaches.
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (8, 128, 1))
    y = np.cumsum(x, axis=0) / 4
    net = lstmx.LSTM(1, 8, output_size=1, seed=0)
    history = lstmx.fit(net, (x, y), loss="mse", optimizer=lstmx.optim.Adam(net, lr=1e-2),
                        epochs=30, batch_size=16, seed=0, progress=False)
    assert history[-1]["loss"] < 0.05 * y.var()


def test_history_entries():
    rng = np.random.default_rng(0)
    x, y = small_task(rng)
    history = lstmx.fit(make_net(), (x, y), epochs=3, batch_size=5, seed=0, progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    for h in history:
        assert set(h) == {"epoch", "loss", "val_loss", "time"}
        assert h["val_loss"] is None and h["time"] >= 0 and math.isfinite(h["loss"])


def test_fit_is_the_public_loop():
    # One epoch of one batch, no shuffling: exactly forward, loss, backward, step.
    rng = np.random.default_rng(1)
    x, y = small_task(rng)
    net, ref = make_net(), make_net()
    lstmx.fit(net, (x, y), optimizer=lstmx.optim.SGD(net, lr=0.1), epochs=1, batch_size=12,
              shuffle=False, progress=False)
    out, cache = ref.forward(x)
    _, dy = lstmx.losses.softmax_cross_entropy(out, y)
    lstmx.optim.SGD(ref, lr=0.1).step(ref.backward(dy, cache))
    np.testing.assert_array_equal(net.flat, ref.flat)


def test_seed_makes_fit_reproducible():
    rng = np.random.default_rng(2)
    x, y = small_task(rng)
    a, b, c = make_net(), make_net(), make_net()
    for net, seed in ((a, 5), (b, 5), (c, 6)):
        lstmx.fit(net, (x, y), epochs=2, batch_size=4, seed=seed, progress=False)
    assert a.flat.tobytes() == b.flat.tobytes()
    assert a.flat.tobytes() != c.flat.tobytes()


# ----------------------------------------------------------------------
# options

def test_validation_data_gives_val_loss():
    rng = np.random.default_rng(3)
    x, y = small_task(rng)
    xv, yv = small_task(rng, N=5)
    net = make_net()
    history = lstmx.fit(net, (x, y), validation=(xv, yv), epochs=2, batch_size=4, seed=0,
                        progress=False)
    expected, _ = lstmx.losses.softmax_cross_entropy(net.predict(xv), yv)
    assert history[-1]["val_loss"] == pytest.approx(expected, rel=1e-12)


def test_validation_fraction_holds_out_sequences():
    rng = np.random.default_rng(4)
    x, y = small_task(rng, N=20)
    lengths = rng.integers(2, 8, 20)
    seen = []
    net = make_net()
    real_forward = net.forward

    def spy(x, lengths=None, **kw):
        seen.append(x.shape[1])
        return real_forward(x, lengths=lengths, **kw)

    net.forward = spy
    history = lstmx.fit(net, (x, y, lengths), validation=0.25, epochs=1, batch_size=100,
                        seed=0, progress=False)
    assert seen == [15]                     # 5 of 20 held out
    assert history[0]["val_loss"] is not None


def test_early_stopping_restores_best_parameters():
    # Validation targets disagree with the training targets, so val_loss
    # rises once training makes progress: training stops `patience` epochs
    # after the best epoch, with that epoch's parameters back.
    rng = np.random.default_rng(5)
    x, y = small_task(rng, classes=3)
    net = make_net()
    snapshots = {}

    def keep(metrics):
        snapshots[metrics["epoch"]] = net.flat.copy()

    history = lstmx.fit(net, (x, y), validation=(x, (y + 1) % 3), early_stopping=2, epochs=50,
                        optimizer=lstmx.optim.Adam(net, lr=0.05), batch_size=12, seed=0,
                        callback=keep, progress=False)
    val = [h["val_loss"] for h in history]
    best = int(np.argmin(val)) + 1
    assert len(history) == best + 2 < 50
    np.testing.assert_array_equal(net.flat, snapshots[best])
    assert not np.array_equal(net.flat, snapshots[len(history)])


def test_callback_returning_false_stops():
    rng = np.random.default_rng(6)
    x, y = small_task(rng)
    calls = []

    def callback(metrics):
        calls.append(metrics)
        if metrics["epoch"] == 2:
            return False
        return None                           # anything but False goes on

    history = lstmx.fit(make_net(), (x, y), epochs=10, batch_size=4, callback=callback,
                        progress=False)
    assert len(history) == 2 and calls == history


def test_clip_bounds_the_step():
    # SGD with lr 1 moves the parameters by exactly the clipped gradient.
    rng = np.random.default_rng(7)
    x, y = small_task(rng)
    net = make_net()
    before = net.flat.copy()
    lstmx.fit(net, (x, y), optimizer=lstmx.optim.SGD(net, lr=1.0), clip=1e-3, epochs=1,
              batch_size=12, progress=False)
    assert np.linalg.norm(net.flat - before) == pytest.approx(1e-3, rel=1e-4)


def test_variable_length_list_equals_padded_arrays():
    rng = np.random.default_rng(8)
    lengths = np.array([5, 2, 7, 3, 6, 1])
    seqs = [(rng.standard_normal((n, 3)), rng.integers(0, 3, n)) for n in lengths]
    x = np.zeros((7, 6, 3))
    y = np.zeros((7, 6), np.int64)
    for k, (xs, ys) in enumerate(seqs):
        x[:lengths[k], k], y[:lengths[k], k] = xs, ys
    a, b = make_net(), make_net()
    ha = lstmx.fit(a, seqs, epochs=3, batch_size=4, seed=1, progress=False)
    hb = lstmx.fit(b, (x, y, lengths), epochs=3, batch_size=4, seed=1, progress=False)
    np.testing.assert_allclose(a.flat, b.flat, rtol=0, atol=1e-12)
    assert [h["loss"] for h in ha] == pytest.approx([h["loss"] for h in hb], rel=1e-12)


def test_list_data_mse_and_batch_first():
    rng = np.random.default_rng(9)
    seqs = [(rng.standard_normal((n, 2)), rng.standard_normal((n, 1))) for n in (3, 5, 4)]
    net = make_net(I=2, O=1, batch_first=True)
    history = lstmx.fit(net, seqs, loss="mse", epochs=2, batch_size=2, progress=False)
    assert len(history) == 2
    # batch_first arrays: same result as time-major on a time-major twin
    x, y = small_task(rng)
    a, b = make_net(batch_first=True), make_net()
    lstmx.fit(a, (x.transpose(1, 0, 2), y.T), epochs=2, batch_size=5, seed=0, progress=False)
    lstmx.fit(b, (x, y), epochs=2, batch_size=5, seed=0, progress=False)
    np.testing.assert_allclose(a.flat, b.flat, rtol=0, atol=1e-12)


def test_progress_bar_on_request_only(capsys):
    rng = np.random.default_rng(10)
    x, y = small_task(rng)
    lstmx.fit(make_net(), (x, y), epochs=2, batch_size=4, progress=True)
    err = capsys.readouterr().err
    assert "epoch 1/2" in err and "epoch 2/2" in err and err.endswith("\n")
    lstmx.fit(make_net(), (x, y), epochs=1)      # stderr is not a terminal under pytest
    assert capsys.readouterr() == ("", "")


# ----------------------------------------------------------------------
# argument errors

@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"loss": "hinge"}, ValueError, "loss"),
    ({"epochs": 0}, ValueError, "epochs"),
    ({"batch_size": "4"}, TypeError, "batch_size"),
    ({"clip": -1.0}, ValueError, "clip"),
    ({"callback": 3}, TypeError, "callback"),
    ({"progress": "yes"}, TypeError, "progress"),
    ({"shuffle": None}, TypeError, "shuffle"),
    ({"validation": 1.5}, ValueError, "validation"),
    ({"early_stopping": 2}, ValueError, "early_stopping"),
    ({"optimizer": "adam"}, TypeError, "optimizer"),
])
def test_bad_arguments(kwargs, error, fragment):
    rng = np.random.default_rng(11)
    x, y = small_task(rng)
    with pytest.raises(error, match=fragment):
        lstmx.fit(make_net(), (x, y), **kwargs)


def test_optimizer_of_another_net_is_refused():
    rng = np.random.default_rng(12)
    x, y = small_task(rng)
    with pytest.raises(ValueError, match="optimizer"):
        lstmx.fit(make_net(), (x, y), optimizer=lstmx.optim.Adam(make_net()))


@pytest.mark.parametrize("make_data, error, fragment", [
    (lambda x, y: 5, TypeError, "data"),
    (lambda x, y: (x[..., :2], y), ValueError, r"data: x must have shape \(T, N, 3\)"),
    (lambda x, y: (x, y[:3]), ValueError, "data: y"),
    (lambda x, y: (x, y.astype(float)), TypeError, "integer class"),
    (lambda x, y: (x, y + 5), ValueError, r"class indices must lie in \[0, 3\)"),
    (lambda x, y: (x, y, np.full(12, 9)), ValueError, "lengths"),
    (lambda x, y: [(x[:, 0], y[:, 0]), (x[:, 1, :2], y[:, 1])], ValueError, r"data\[1\]: x"),
    (lambda x, y: (np.where(x > 1, np.nan, x), y), ValueError, "NaN"),
])
def test_bad_data(make_data, error, fragment):
    rng = np.random.default_rng(13)
    x, y = small_task(rng)
    with pytest.raises(error, match=fragment):
        lstmx.fit(make_net(), make_data(x, y))


def test_mse_targets_must_match_outputs():
    rng = np.random.default_rng(14)
    x, y = small_task(rng)
    with pytest.raises(ValueError, match=r"\(7, 12, 3\)"):
        lstmx.fit(make_net(), (x, np.zeros((7, 12, 2))), loss="mse")


# ----------------------------------------------------------------------
# lstmx train

def write_dense(path, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((9, 40, 3)).astype(np.float32)
    y = (x[..., 0] > 0).astype(np.int64)
    np.savez(path, x=x, y=y, lengths=rng.integers(4, 10, 40))
    return path


def write_flat(path, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 9, 30)
    x = rng.standard_normal((lengths.sum(), 2))
    np.savez(path, x_flat=x, y_flat=np.cumsum(x, axis=0)[:, :1] * 0.1, lengths=lengths)
    return path


def train(*args):
    return cli.main(["train", *map(str, args)])


@pytest.mark.parametrize("writer, options", [
    (write_dense, ["--hidden", "5", "--val", "0.2", "--lr", "0.01", "--batch", "8"]),
    (write_flat, ["--hidden", "3", "--layers", "2", "--bidirectional", "--no-peephole"]),
])
def test_train_resume_is_bit_exact(tmp_path, capsys, writer, options):
    data = writer(tmp_path / "data.npz")
    split, straight = tmp_path / "split.npz", tmp_path / "straight.npz"
    assert train(data, *options, "--seed", 3, "--epochs", 2, "--out", split) == 0
    assert state_path(split) == str(tmp_path / "split.state.npz")
    assert (tmp_path / "split.state.npz").exists()
    assert train(data, "--epochs", 4, "--resume", "--out", split) == 0
    assert train(data, *options, "--seed", 3, "--epochs", 4, "--out", straight) == 0
    out = capsys.readouterr().out
    assert "epoch 3/4" in out and "epoch 4/4" in out
    a, b = lstmx.load(split), lstmx.load(straight)
    assert a.flat.tobytes() == b.flat.tobytes()
    assert a.bidirectional == ("--bidirectional" in options)
    assert a.peephole == ("--no-peephole" not in options)
    # nothing left to do
    assert train(data, "--epochs", 4, "--resume", "--out", split) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_train_infers_sizes_and_loss(tmp_path):
    data = write_flat(tmp_path / "flat.npz")
    assert train(data, "--hidden", 2, "--epochs", 1, "--out", tmp_path / "m.npz") == 0
    net = lstmx.load(tmp_path / "m.npz")
    assert (net.input_size, net.output_size) == (2, 1)           # mse on y_flat's one feature
    data = write_dense(tmp_path / "dense.npz")
    assert train(data, "--hidden", 2, "--epochs", 1, "--out", tmp_path / "c.npz") == 0
    assert lstmx.load(tmp_path / "c.npz").output_size == 2        # ce: classes 0 and 1


def one_line_error(capsys, *fragments):
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_train_errors(tmp_path, capsys):
    data = write_dense(tmp_path / "data.npz")
    out = tmp_path / "m.npz"
    assert train(data, "--out", out) == 1
    one_line_error(capsys, "--hidden")
    assert train(data, "--hidden", 2, "--resume", "--out", out) == 1
    one_line_error(capsys, "m.state.npz")
    assert train(tmp_path / "missing.npz", "--hidden", 2, "--out", out) == 1
    one_line_error(capsys, "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not an archive")
    assert train(tmp_path / "junk.npz", "--hidden", 2, "--out", out) == 1
    one_line_error(capsys, "junk.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    assert train(tmp_path / "other.npz", "--hidden", 2, "--out", out) == 1
    one_line_error(capsys, "x and y")
    np.savez(tmp_path / "objects.npz", x=np.array([None]), y=np.zeros(1))
    assert train(tmp_path / "objects.npz", "--hidden", 2, "--out", out) == 1
    one_line_error(capsys, "objects.npz")
    assert train(data, "--hidden", 2, "--val", 1.5, "--out", out) == 1
    one_line_error(capsys, "--val")
    assert train(data, "--hidden", 0, "--out", out) == 1
    one_line_error(capsys, "--hidden")
    assert train(data, "--hidden", 2, "--loss", "bogus", "--out", out) == 2
    one_line_error(capsys, "--loss")
    # resume: other settings or other data are refused
    assert train(data, "--hidden", 2, "--epochs", 1, "--seed", 0, "--out", out) == 0
    capsys.readouterr()
    assert train(data, "--hidden", 3, "--epochs", 2, "--resume", "--out", out) == 1
    one_line_error(capsys, "--hidden 3")
    other = write_dense(tmp_path / "other_data.npz", seed=1)
    assert train(other, "--epochs", 2, "--resume", "--out", out) == 1
    one_line_error(capsys, "not the data")


def test_train_on_a_terminal_reports_each_epoch_once(tmp_path, capsys, monkeypatch):
    """With a progress bar (stderr a terminal), the bar is erased at the end
    of each epoch and the epoch's line is printed once, by train."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    data = write_dense(tmp_path / "data.npz")
    assert train(data, "--hidden", 3, "--epochs", 2, "--out", tmp_path / "m.npz") == 0
    captured = capsys.readouterr()
    assert captured.out.count("epoch 1/2") == 1 and captured.out.count("epoch 2/2") == 1
    assert "[" in captured.err                       # the bar was drawn
    assert " loss " not in captured.err.split("\r")[-1]   # and erased, no epoch line


def test_fit_progress_bar_ends_each_epoch_with_a_line(capsys):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 8, 2)).astype(np.float32)
    y = (x[..., 0] > 0).astype(np.int64)
    lstmx.fit(lstmx.LSTM(2, 3, output_size=2, seed=0), (x, y), epochs=2, batch_size=4,
              seed=0, progress=True)
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "epoch 2/2 loss" in err
