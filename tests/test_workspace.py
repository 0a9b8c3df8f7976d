"""predict reuses its scratch arrays from call to call (LSTM._workspace):
results never depend on what an earlier call left there, a returned array
is never written again, and calls from several threads at once are right."""
import threading

import numpy as np

from helpers import Arch, random_x


def _fresh_predict(net, x, lengths):
    net._workspace.arrays.clear()
    return net.predict(x, lengths=lengths)


def test_reuse_across_shapes_and_lengths(rng):
    net = Arch(4, 9, num_layers=3, bidirectional=True, peephole=True, output_size=2).make(
        dtype=np.float64, seed=8)
    calls = []
    for T, N, ragged in [(7, 3, True), (7, 3, False), (5, 3, True), (7, 3, True), (7, 1, False)]:
        x = random_x(rng, T, N, 4)
        lengths = rng.integers(1, T + 1, N) if ragged else None
        calls.append((x, lengths, net.predict(x, lengths=lengths)))
    for x, lengths, y in calls:
        np.testing.assert_array_equal(y, _fresh_predict(net, x, lengths))


def test_returned_arrays_are_never_reused(rng):
    for head in (None, 3):
        net = Arch(4, 6, num_layers=2, output_size=head).make(dtype=np.float64, seed=9)
        x = random_x(rng, 5, 2, 4)
        y1, (h1, c1) = net.predict(x, return_state=True)
        kept = y1.copy(), h1.copy(), c1.copy()
        net.predict(random_x(rng, 5, 2, 4), return_state=True)
        for a, b in zip((y1, h1, c1), kept):
            np.testing.assert_array_equal(a, b)


def _check_predict_from_threads(net, inputs, repeats):
    """Each input predicted `repeats` times, every input on its own thread at
    once; every thread ends, with what one call on a fresh workspace gives."""
    expected = [_fresh_predict(net, x, None) for x in inputs]
    results = [None] * len(inputs)

    def work(i):
        for _ in range(repeats):
            results[i] = net.predict(inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive()
    for y, y_ref in zip(results, expected):
        np.testing.assert_array_equal(y, y_ref)


def test_concurrent_calls_on_one_network(rng):
    net = Arch(4, 16, num_layers=2, bidirectional=True, peephole=True, output_size=3).make(
        dtype=np.float64, seed=10)
    _check_predict_from_threads(net, [random_x(rng, 30, 1 + i % 3, 4) for i in range(8)], 5)


def test_concurrent_split_recurrences(rng):
    """Single sequences whose recurrence is split over two threads (they meet
    at a barrier every step), predicted from several threads at once: the
    second thread of each comes from one shared pool, and every call ends
    with the right result."""
    net = Arch(4, 64, num_layers=2, bidirectional=False, peephole=True, output_size=3).make(
        dtype=np.float32, seed=11)
    assert net._split(1) == "units"
    inputs = [random_x(rng, 40, 1, 4).astype(np.float32) for _ in range(6)]
    _check_predict_from_threads(net, inputs, 3)
