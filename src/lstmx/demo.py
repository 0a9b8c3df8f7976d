"""``lstmx demo``: peephole LSTMs learn to measure time.

The task is **Measuring Spike Delays (MSD)** from

    F. A. Gers, N. N. Schraudolph and J. Schmidhuber (2002), "Learning
    Precise Timing with LSTM Recurrent Networks", Journal of Machine
    Learning Research 3:115-143, section 4 (https://jmlr.org/papers/v3/gers02a.html).

The input is one channel of spikes (1) on silence (0). Spike n comes
``F + I(n)`` steps after spike n-1, with a fixed base interval F and a
random extra delay I(n) from a small set; at the step of each spike the
network must output I(n), the delay it has just measured, and 0 at every
other step. Nothing else marks time: the network has to count the steps
since the last spike in its cell state and read the count out at exactly
the right step. A sequence here opens with a reference spike at step 0
(no target), like the previous spike of a continual stream.

As in the paper, an output counts as correct when its absolute error is
below 0.49 (it rounds to the right delay), and a network solves the
continual task when it measures 1000 consecutive spikes of one unbroken test
stream correctly -- here a stream of about 11,000 steps, run without a
reset although training only saw sequences of 6 spikes.

What the paper reports for this setting (section 4.2, Table 1): "The
continual MSD task for F = 10 with I(n) in {0, 1} or I(n) in {0, 1, 2}, is
solved with or without peephole connections", and "Peephole LSTM
outperforms LSTM for some sets, though peephole connections are not
mandatory for the task." The demo runs the F = 10, I(n) in {0, 1, 2} setting
with and without peepholes and compares the fractions of runs that solve
it. Training differs from the paper's (one memory cell trained online with
a truncated gradient and momentum over up to 10^7 sequences): here 8 cells,
exact BPTT, Adam and mini-batches of 32 sequences, so only the outcome, not
the training time, is comparable. Larger F (the paper's 49-versus-50-step
distinction) needs far more training than the demo's one-minute budget.
"""
import time

import numpy as np

from . import optim
from .lstm import LSTM
from .training import fit

__all__ = ["msd_task", "spike_accuracy", "run"]

CITATION = ("Gers, Schraudolph & Schmidhuber (2002), Learning Precise Timing with LSTM "
            "Recurrent Networks, JMLR 3:115-143")
BASE_INTERVAL = 10          # F
DELAYS = (0, 1, 2)          # the values I(n) is drawn from
TOLERANCE = 0.49            # |output - I(n)| below this: the delay is measured correctly
STREAM_SPIKES = 1000        # consecutive spikes of the continual test stream


def msd_task(n, spikes, *, base_interval=BASE_INTERVAL, delays=DELAYS, seed=None,
             dtype=np.float32):
    """Sequences of the Measuring Spike Delays task.

    Parameters
    ----------
    n : int
        Sequences.
    spikes : int
        Spikes to measure per sequence, after the reference spike at step 0.
    base_interval : int
        F: spike k comes F + I(k) steps after spike k-1.
    delays : sequence of int >= 0
        The values I(k) is drawn from, uniformly.
    seed : int, Generator or None

    Returns
    -------
    x : ndarray (T, n, 1)
        1 at spikes, 0 elsewhere (time-major; padded with zeros after a
        sequence's last spike).
    y : ndarray (T, n, 1)
        I(k) at spike k (k >= 1), 0 at every other step.
    lengths : ndarray (n,)
        Each sequence ends at its last spike.
    """
    rng = np.random.default_rng(seed)
    extra = rng.choice(np.asarray(delays), size=(n, spikes))   # I(k), (n, spikes)
    times = np.cumsum(base_interval + extra, axis=1)          # steps of spikes 1..spikes
    lengths = times[:, -1] + 1
    T = int(lengths.max())
    x = np.zeros((T, n, 1), dtype)
    y = np.zeros((T, n, 1), dtype)
    columns = np.repeat(np.arange(n), spikes)
    x[0, :, 0] = 1
    x[times.ravel(), columns, 0] = 1
    y[times.ravel(), columns, 0] = extra.ravel()
    return x, y, lengths


def spike_accuracy(net, x, y, lengths):
    """(correct, spikes): spikes after step 0 whose output is within
    TOLERANCE of the delay, and how many spikes there are."""
    out = net.predict(x, lengths=lengths)
    at_spike = x[..., 0] == 1
    at_spike[0] = False        # the reference spike has no target
    error = np.abs(out[..., 0] - y[..., 0])[at_spike]
    return int((error < TOLERANCE).sum()), int(error.size)


def _train_one(peephole, seed, epochs, train, val, say):
    """Train one network until every validation spike is measured
    correctly (or epochs run out); return (net, epochs run, solved at)."""
    net = LSTM(1, 8, output_size=1, peephole=peephole, seed=seed)
    opt = optim.Adam(net, lr=1e-2)
    solved_at = []

    def report(metrics):
        correct, total = spike_accuracy(net, *val)
        say(f"  epoch {metrics['epoch']:3d}  loss {metrics['loss']:.5f}  "
            f"held-out spikes measured {correct}/{total}")
        if correct == total:
            solved_at.append(metrics["epoch"])
            return False       # stop: the stream test decides
        return True

    history = fit(net, train, loss="mse", optimizer=opt, epochs=epochs, batch_size=32,
                  seed=seed, callback=report, progress=False)
    return net, len(history), (solved_at[0] if solved_at else None)


def run(*, seed=0, epochs=40, runs=5, quick=False, say=print):
    """Train peephole and plain LSTMs on MSD and report against the paper.

    Returns a dict {"peephole": [...], "plain": [...]} of per-run results
    (dicts with seed, epochs, stream_correct, stream_spikes, solved).
    """
    start = time.perf_counter()
    n_train, n_val, stream = (64, 32, 100) if quick else (512, 256, STREAM_SPIKES)
    if quick:
        epochs, runs = min(epochs, 2), 1
        say("--quick: tiny data and 2 epochs, too little to learn the task; checks that the "
            "demo runs.")
    say(f"Measuring Spike Delays (MSD), after {CITATION}.")
    say(f"Input: spikes F + I(n) steps apart, F = {BASE_INTERVAL}, I(n) in "
        f"{{{', '.join(map(str, DELAYS))}}}; target: I(n) at each spike, 0 elsewhere.")
    say(f"Criterion: |output - I(n)| < {TOLERANCE} at every spike of an unbroken stream of "
        f"{stream} spikes.")
    say("Paper (sec. 4.2, Table 1): this setting \"is solved with or without peephole "
        "connections\".")
    train = msd_task(n_train, 6, seed=[seed, 1])
    val = msd_task(n_val, 6, seed=[seed, 2])
    test = msd_task(1, stream, seed=[seed, 3])
    results = {}
    for peephole, name in ((True, "peephole"), (False, "plain")):
        results[name] = []
        for k in range(runs):
            run_seed = seed * 1000 + k
            say(f"{name} LSTM (8 cells), run {k + 1}/{runs}, seed {run_seed}:")
            net, ran, solved_at = _train_one(peephole, run_seed, epochs, train, val, say)
            correct, total = spike_accuracy(net, *test)
            solved = correct == total
            results[name].append({"seed": run_seed, "epochs": ran, "solved_at": solved_at,
                                  "stream_correct": correct, "stream_spikes": total,
                                  "solved": solved})
            say(f"  test stream: {correct}/{total} spikes measured correctly -> "
                + ("solved" if solved else "not solved")
                + (f" (held-out set correct after {solved_at} epochs)" if solved_at else ""))
    say("")
    for name in ("peephole", "plain"):
        rs = results[name]
        solved = [r for r in rs if r["solved"]]
        speed = (f", mean {np.mean([r['solved_at'] or r['epochs'] for r in solved]):.1f} epochs"
                 if solved else "")
        say(f"result: {name} LSTM solved continual MSD (F={BASE_INTERVAL}, I in "
            f"{{{', '.join(map(str, DELAYS))}}}) in {len(solved)}/{len(rs)} runs "
            f"({100 * len(solved) / len(rs):.0f}%{speed}); "
            "paper: solved with and without peepholes")
    say(f"({time.perf_counter() - start:.1f}s)")
    return results
