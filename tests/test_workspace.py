"""Runs reuse their scratch arrays from call to call (LSTM._pool): predict's
and backward's while they run, a training cache's once it is freed. Results
never depend on what an earlier call left there, a returned array is never
written again, a live cache's arrays are never lent out, and calls from
several threads at once are right."""
import gc
import threading

import numpy as np
import pytest

import lstmx
from helpers import Arch, needs_split, random_x


def _fresh_predict(net, x, lengths):
    net._pool.free.clear()
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


def test_gradients_are_reused_only_once_let_go(rng):
    """backward's gradient buffer comes back, zeroed, once nothing refers
    to it (neither the Gradients nor any view of it), never while something
    does; either way the gradients are backward's."""
    import weakref
    net = Arch(4, 6, num_layers=2, bidirectional=True, output_size=3).make(
        dtype=np.float64, seed=9)
    x = random_x(rng, 5, 2, 4)
    y, cache = net.forward(x)
    dy = rng.standard_normal(y.shape)
    first = net.backward(dy, cache)
    expected = first.flat.copy()
    # held: a new buffer, and the held one keeps its values
    second = net.backward(2 * dy, cache)
    assert second.flat is not first.flat
    np.testing.assert_array_equal(first.flat, expected)
    np.testing.assert_array_equal(second.flat, 2 * expected)
    # a view held: its buffer stays out of reach
    view = second["W_i_x_fw_layer1"]
    held = view.copy()
    buffer = weakref.ref(second.flat)
    del first, second
    gc.collect()
    third = net.backward(4 * dy, cache)
    assert third.flat is not buffer()
    np.testing.assert_array_equal(view, held)
    # let go of everything: reused, zeroed first
    del view
    gc.collect()
    reused = net.backward(dy, cache)
    assert reused.flat is buffer()
    np.testing.assert_array_equal(reused.flat, expected)
    np.testing.assert_array_equal(third.flat, 4 * expected)


def _check_predict_from_threads(net, inputs, repeats):
    """Each input predicted `repeats` times, every input on its own thread at
    once; every thread ends, with what one call on an emptied pool gives."""
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


@needs_split
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


def _train_step(net, x, lengths, R, input_grad=True):
    y, cache = net.forward(x, lengths=lengths)
    g = net.backward(R, cache, input_grad=input_grad)
    return y, g


def test_training_reuses_buffers_of_freed_caches(rng):
    net = Arch(4, 9, num_layers=2, bidirectional=True, peephole=True, output_size=2).make(
        dtype=np.float64, seed=12)
    runs = []
    for T, N, ragged in [(7, 3, True), (7, 3, False), (5, 3, True), (7, 3, True), (6, 2, False)]:
        x = random_x(rng, T, N, 4)
        lengths = rng.integers(1, T + 1, N) if ragged else None
        R = rng.standard_normal((T, N, 2))
        y, g = _train_step(net, x, lengths, R)
        runs.append((x, lengths, R, y, g.flat, g.x, g.state))
    gc.collect()
    assert net._pool.free          # the freed caches' arrays came back
    for x, lengths, R, y, flat, dx, state in runs:
        net._pool.free.clear()
        y_fresh, g = _train_step(net, x, lengths, R)
        np.testing.assert_array_equal(y, y_fresh)
        np.testing.assert_array_equal(flat, g.flat)
        np.testing.assert_array_equal(dx, g.x)
        np.testing.assert_array_equal(state[0], g.state[0])
        np.testing.assert_array_equal(state[1], g.state[1])


def test_live_caches_keep_their_arrays(rng):
    """Two caches alive at once, used in the other order, and a cache used
    twice: each backward sees its own forward's arrays."""
    net = Arch(4, 6, num_layers=2, bidirectional=False, peephole=True, output_size=2).make(
        dtype=np.float64, seed=13)
    x1, x2 = random_x(rng, 5, 3, 4), random_x(rng, 5, 3, 4)
    R = rng.standard_normal((5, 3, 2))
    _, g1_ref = _train_step(net, x1, None, R)
    _, g2_ref = _train_step(net, x2, None, R)
    _, c1 = net.forward(x1)
    _, c2 = net.forward(x2)
    g2 = net.backward(R, c2)
    net.predict(x2)
    g1 = net.backward(R, c1)
    g1_again = net.backward(R, c1)
    for g, ref in ((g1, g1_ref), (g2, g2_ref), (g1_again, g1_ref)):
        np.testing.assert_array_equal(g.flat, ref.flat)
        np.testing.assert_array_equal(g.x, ref.x)


def test_input_grad_false_skips_only_dx(rng):
    for arch in (Arch(4, 6, num_layers=2, bidirectional=True, peephole=True, output_size=2),
                 Arch(4, 6, num_layers=1, bidirectional=False, peephole=False)):
        net = arch.make(dtype=np.float64, seed=14)
        x = random_x(rng, 5, 3, 4)
        y, cache = net.forward(x, lengths=[5, 2, 4])
        R = rng.standard_normal(y.shape)
        full = net.backward(R, cache)
        part = net.backward(R, cache, input_grad=False)
        assert full.x.shape == x.shape and part.x is None
        np.testing.assert_array_equal(part.flat, full.flat)
        np.testing.assert_array_equal(part.state[0], full.state[0])
        np.testing.assert_array_equal(part.state[1], full.state[1])
    with pytest.raises(TypeError, match="input_grad"):
        net.backward(R, cache, input_grad="no")


def test_a_copied_cache_outlives_its_original(rng):
    import copy
    net = Arch(4, 6, num_layers=2, bidirectional=True, peephole=True, output_size=2).make(
        dtype=np.float64, seed=15)
    x = random_x(rng, 5, 3, 4)
    R = rng.standard_normal((5, 3, 2))
    _, cache = net.forward(x)
    expected = net.backward(R, cache).flat
    shallow = copy.copy(cache)
    free = len(net._pool.free)
    del cache
    gc.collect()
    assert len(net._pool.free) == free     # the shallow copy holds the arrays
    net.forward(random_x(rng, 5, 3, 4))
    np.testing.assert_array_equal(net.backward(R, shallow).flat, expected)
    deep = copy.deepcopy(shallow)
    free = len(net._pool.free)
    del shallow
    gc.collect()
    assert len(net._pool.free) > free      # the last copy sharing them is gone
    net.forward(random_x(rng, 5, 3, 4))    # reuses the freed buffers
    np.testing.assert_array_equal(net.backward(R, deep).flat, expected)


def test_pool_keeps_a_bounded_number_of_buffers():
    from lstmx.lstm import _Pool, _line_room
    pool = _Pool(np.float32)
    taken = [pool.take((i + 1, 3)) for i in range(_Pool.MAX_FREE + 5)]
    pool.give(taken)
    pool.give(taken[-3:])           # given twice: still kept once
    pad = _line_room(np.dtype(np.float32))      # room for a start on a cache line
    assert len(pool.free) == _Pool.MAX_FREE
    assert len({id(b) for b in pool.free}) == _Pool.MAX_FREE
    assert min(b.size for b in pool.free) == 6 * 3 + pad     # the smallest went first
    a = pool.take((4, 4))           # the smallest that fits
    assert a.shape == (4, 4) and a.base.size == 6 * 3 + pad
    big = _Pool(np.float32)
    big.give([big.take((10_000,))])
    assert big.take((100,)).base.size == 100 + pad   # not the 40 KB buffer
    assert big.take((5_000,)).base.size == 10_000 + pad
    for shape in ((1,), (3, 5), (7, 1, 9)):
        assert big.take(shape).ctypes.data % 64 == 0


def test_packed_blocks_are_reused_within_bounds(rng):
    """The packed weights' blocks go back to a bounded cache after each
    call (_lstm._alloc/_free): products through blocks of many sizes, some
    reused and some evicted, stay exact, and the cache never holds more
    blocks or bytes than its limits."""
    from lstmx import _lstm

    def product(M, K):
        a = rng.standard_normal((3, K))
        w = rng.standard_normal((M, K))
        c = np.empty((3, M))
        _lstm._gemm_packed_test(a, w, True, c)
        np.testing.assert_allclose(c, a @ w.T, rtol=1e-12, atol=1e-12)
        blocks, held, slots, limit, hits = _lstm._packed_cache()
        assert 1 <= blocks <= slots and held <= limit
        return hits

    hits = product(40, 17)
    assert product(40, 17) == hits + 1     # the same size again: the freed block
    for M, K in [(16 * i, 33) for i in range(1, 12)] + [(2048, 2048), (8, 8)]:
        product(M, K)               # more sizes than slots, one of 32 MB
    # a network's second call runs in the blocks of its first
    net = Arch(4, 64, num_layers=2, bidirectional=True, output_size=3).make(
        dtype=np.float32, seed=12)
    x = random_x(rng, 10, 2, 4).astype(np.float32)
    y = net.predict(x)
    before = _lstm._packed_cache()
    np.testing.assert_array_equal(net.predict(x), y)
    after = _lstm._packed_cache()
    assert after[:2] == before[:2] and after[4] >= before[4] + 4   # 2 layers x 2 directions


def test_networks_copy_and_pickle_with_a_fresh_pool(rng):
    """A copied or pickled network gets a pool of its own, and works; a
    deep-copied cache still belongs to the network it came from."""
    import copy
    import pickle
    net = Arch(4, 6, num_layers=2, bidirectional=True, peephole=True, output_size=2).make(
        dtype=np.float64, seed=16)
    x = random_x(rng, 5, 3, 4)
    y = net.predict(x)
    for twin in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        assert twin._pool is not net._pool and not twin._pool.free
        np.testing.assert_array_equal(twin.predict(x), y)
        # the twin's parameters are its own flat: changing it changes the twin only
        assert not np.shares_memory(twin.flat, net.flat)
        assert all(np.shares_memory(v, twin.flat) for v in twin.params.values())
        twin.flat[...] = 0
        assert not twin.predict(x).any()
        np.testing.assert_array_equal(net.predict(x), y)
    _, cache = net.forward(x)
    R = rng.standard_normal(y.shape)
    twin_cache = copy.deepcopy(cache)
    assert twin_cache.net is net
    np.testing.assert_array_equal(net.backward(R, twin_cache).flat, net.backward(R, cache).flat)


def _predict_in_child(conn, net, x):
    conn.send(net.predict(x))
    conn.close()


@needs_split
def test_split_runs_in_a_forked_child(rng):
    """A forked child has no worker thread (threads do not survive fork):
    it starts its own, and a split run there gives the parent's result."""
    import multiprocessing
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    net = Arch(4, 64, num_layers=1, bidirectional=False, peephole=True, output_size=3).make(
        dtype=np.float32, seed=17)
    assert net._split(1) == "units"
    x = random_x(rng, 30, 1, 4).astype(np.float32)
    y = net.predict(x)                       # the parent's worker now exists
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_predict_in_child, args=(child, net, x))
    proc.start()
    assert parent.poll(60), "the child did not answer"
    y_child = parent.recv()
    proc.join(60)
    assert proc.exitcode == 0
    np.testing.assert_array_equal(y_child, y)


def test_pairs_fall_back_to_a_python_thread_when_the_worker_is_taken(rng):
    """While another call holds lstmx's worker thread, a split run pairs its
    jobs on a thread of its own: same result."""
    net = Arch(4, 64, num_layers=2, bidirectional=True, peephole=True, output_size=3).make(
        dtype=np.float64, seed=18)
    x = random_x(rng, 20, 1, 4)
    y = net.predict(x)
    y_train, cache = net.forward(x)
    g = net.backward(np.ones_like(y_train), cache)
    assert lstmx._lstm._worker_lock.acquire(blocking=False)
    try:
        np.testing.assert_array_equal(net.predict(x), y)
        _, cache = net.forward(x)
        np.testing.assert_array_equal(net.backward(np.ones_like(y_train), cache).flat, g.flat)
    finally:
        lstmx._lstm._worker_lock.release()
