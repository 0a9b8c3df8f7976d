"""The LSTM network: parameters in one flat buffer, stacking, directions, head.

All parameters live in one contiguous 1-D buffer ``net.flat``; the public
names of seed 000 are zero-copy views into it (DESIGN.md section 2). Each
(layer, direction) keeps its gates packed in the order i, f, c(g), o:

    w_x (4H, I_k)   w_h (4H, H)   bias (4H,)   peep (3H,) = p_i, p_f, p_o

laid out in that order, layer after layer, direction fw then bw, followed by
the head's weights (O, D*H) and biases (O,). Gradients use the same layout.

Row-major (4H, I) and (4H, H) keep every named view contiguous. Measured
before choosing, scipy's sgemv over W_h on one thread: at H=320 32 us in
this layout against 28 us stored transposed, at H=512 69 against 78 us (two
threads: 37 against 45 us) -- neither layout won throughout, and the
recurrent products are now _cell.c's own, written for this layout.
"""
import bisect
import copy
import math
import operator
import sys
import threading
import time
import weakref
from collections.abc import Mapping

import numpy as np

from . import _lstm
from ._threads import blas_held, get_num_threads, l2_cache_bytes
from ._validation import (
    as_float_array,
    as_lengths,
    as_sequence_input,
    as_state,
    check_blas_size,
    check_dtype,
    check_int,
)

GATES = ("i", "f", "c", "o")
PEEPHOLE_GATES = ("i", "f", "o")
DIRECTIONS = ("fw", "bw")
FC_WEIGHTS = "Fully_connected_layerweights"
FC_BIASES = "Fully_connected_layerbiases"

# Share a single sequence's recurrence between two threads when W_h is larger
# than this (see LSTM._split_recurrence): below, a step is so short that the
# barrier between the threads costs more than it saves. Measured, predict of
# T=1000, N=1, float32, ms (split / one thread): H=8 0.71/0.37, H=16
# 0.76/0.53, H=32 0.91/1.13, H=64 1.66/2.17, H=128 3.87/6.23.
SPLIT_MIN_BYTES = 12 * 1024
# A bidirectional single sequence runs a direction on each thread, except
# when a half of W_h fits a core's L2 and W_h is more than this many times
# its size: then each direction in turn is split by units (each thread
# reads its half from L2, not all of W_h from L3). Measured with a 512 KB
# L2, predict, N=1, float32, ms (split by units / a direction a thread,
# alternating blocks): H=128 T=400 2.99/2.78 (W_h 0.25 MB); H=192 T=300
# 4.80/4.52 (0.56 MB); H=224 5.72/6.34 (0.77 MB); H=256 7.71/8.50 (1 MB);
# seed_infer (H=320, 1.6 MB, halves above L2 too) 22.75/20.64; H=512
# T=100 14.32/13.04. Where Linux does not tell the L2's size, the
# single sequence is split by units as one direction is.
SPLIT_L2_OVER = 1.5
# A one-direction run on at least this many sequences gives each of two
# threads half of them (see LSTM._split). Measured, predict, float32, T=200,
# input 16, head 44, ms (halves on two threads / one thread, alternating
# blocks): H=64 N=2 0.42/0.53, N=3 0.58/0.69, N=4 0.71/0.90, N=8 1.00/1.74;
# H=128 N=2 1.07/1.36, N=3 1.83/1.79; H=320 N=2 6.6/7.4, N=3 9.0/10.0.
# Earlier: H=8 N=32 0.77/0.77; H=16 N=128 4.30/6.14; H=320 T=50 N=32
# 13.5/23.0; H=512 N=64 T=100 (big_infer) 198/337.
SPLIT_MIN_BATCH = 2
# ... unless W_h is larger than a core's L2 or than this (this alone where
# Linux does not tell the L2's size): then the two threads share each step
# by units, each reading half of W_h, rather than each reading all of it
# from L3, after projecting half of the rows each. Measured with a 2 MB L2,
# predict, float32, best ms of alternating blocks (halves / units):
# H=128 N=64 T=100 7.2/8.6, H=192 N=16 T=200 5.7/6.6, H=256 N=32 T=100
# (W_h 1 MB) 12.3/13.7; H=320 (1.6 MB) N=8 T=200 10.8/10.8, N=32 T=100
# 20.2/20.1, N=64 T=50 19.6/20.5; H=384 (2.4 MB) N=64 T=100 57.0/53.4,
# H=448 75.2/74.0; H=512 N=8 T=100 18.6/14.0, N=16 30.0/24.1, N=64
# (big_infer) 96.7-98.1/93.6-94.7; H=640 N=64 T=50 71.2/65.3; H=1024 N=32
# T=20 38.0/31.6. (With a 512 KB L2, when each part projected its columns:
# H=320 T=50 N=32 13.5-15.9/13.1-16.8, H=512 N=64 198-225/194-223.)
SPLIT_BATCH_MAX_BYTES = 8 * 1024 * 1024
# Backward of one direction halves the batch between two threads when a
# step's product da W_h is at least this many flops (see
# LSTM._split_backward). Measured, backward, T=200, float32, ms (one thread /
# halves): H=64 N=2 1.02/1.28, N=4 1.75/1.76, N=8 4.02/3.30, N=32 16.9/10.4;
# H=16 N=8 0.72/1.06; H=512 N=64 T=50 362/210.
BACKWARD_SPLIT_MIN_FLOPS = 256 * 1024
# The head's products are halved between two threads from this many
# multiply-adds a product (R T*N rows times D*H times O). Measured, float32,
# us (halves / one thread, alternating blocks), forward and backward: R x K x
# O = 100x64x44 (0.28M) 11/12, 19/22; 200x64x44 (0.56M) 14/20, 30/40;
# 400x64x44 23/36, 52/74; 1600x64x44 71/134, 189/292; 200x640x44 98/170,
# 255/369. (The earlier 1M had not been measured.)
HEAD_SPLIT_MIN_MACS = 1 << 19
# A single sequence's W_h is packed for the one-row kernel (see
# _lstm.packs_one_row) when the call runs at least this many steps, or when
# the chooser may switch ways (they must give the same bits); a shorter
# call reads W_h as it is (matmat): packing it costs about what the packed
# kernel saves in 16 to 32 steps. Predict of one sequence, as it is /
# packed, medians of 12 paired blocks: seed network (a direction a
# thread) T=2 0.81, T=8 0.89, T=16 0.97, T=32 1.12; bidirectional I128
# H128 T=1 0.81, 8 0.93, 16 0.99, 32 1.08; I512 H512 (split by units) T=1
# 0.77, 8 0.88, 16 0.95, 32 1.04; float64 seed network (split) T=1 0.71, 8
# 0.90, 16 0.99, 32 1.12.
ONE_PACKED_MIN_STEPS = 20
# ... and a call of at most this many steps, not chosen either, projects
# its inputs reading W_x as it is (a dot product a row and column), where
# the packed GEMM would pack its rows into panels of 16 or 32 (or W_x) and
# fill few of the panels' lanes. As it is / packed rows, medians of 15
# paired blocks, since a last panel of at most half its width is summed on
# one vector (_cell.c's tile_sums; before it, the seed network's float32
# T=8 was 0.94): seed network float32 T=4 0.88, 5 0.95, 6 0.99-1.01, 7
# 1.04, 8 1.11, float64 T=4 0.86, 6 0.98, 8 1.08; I512 H512 (split by
# units) float32 T=4 0.71, 6 0.79, 8 0.85, float64 T=4 0.89, 6 1.02, 8
# 1.06. Kept at 8: at 7-8 rows the larger network gains 15%, where the
# seed network loses 4-11%.
PROJECT_IN_PLACE_MAX_ROWS = 8
# A forward run on several sequences projects its inputs as the steps come
# (see LSTM._by_step): split by units, from this many sequences, about this
# many rows at a time; else a step at a time where W_x and W_h packed take
# at most half of L2 (or this many bytes).
BY_STEP_UNITS_MIN_N = 64
BY_STEP_ROWS = 256
BY_STEP_MAX_BYTES = 1 << 20


class _Slot:
    """Offsets of one (layer, direction) in the flat buffer."""

    def __init__(self, layer, direction, input_size, hidden_size, peephole, offset):
        H, I = hidden_size, input_size
        self.layer = layer            # 0-based
        self.direction = direction    # 0 fw, 1 bw
        self.input_size = I
        self.w_x = (offset, (4 * H, I))
        offset += 4 * H * I
        self.w_h = (offset, (4 * H, H))
        offset += 4 * H * H
        self.bias = (offset, (4 * H,))
        offset += 4 * H
        self.peep = (offset, (3 * H,)) if peephole else None
        offset += 3 * H if peephole else 0
        self.end = offset

    def packed(self, buffer):
        """(w_x, w_h, bias, peep) views of this slot in ``buffer``."""
        return tuple(
            None if part is None else _view(buffer, *part)
            for part in (self.w_x, self.w_h, self.bias, self.peep)
        )


def _view(buffer, offset, shape):
    return buffer[offset:offset + math.prod(shape)].reshape(shape)


class NamedArrays(Mapping):
    """A read-only mapping from seed-000 names to views into one flat buffer.

    Assigning to a key is refused; writing into a view (``m[name][...] = v``)
    writes the buffer.
    """

    def __init__(self, flat, views):
        self.flat = flat
        # a dict, or a function that makes it when first needed (backward's
        # gradients: building some 40 views took 40-200 us a call, and a
        # training loop reads only .flat)
        self._views_or_maker = views

    @property
    def _views(self):
        if callable(self._views_or_maker):
            self._views_or_maker = self._views_or_maker()
        return self._views_or_maker

    def __getitem__(self, name):
        try:
            return self._views[name]
        except KeyError:
            raise KeyError(f"no parameter named {name!r}; names are e.g. {next(iter(self._views))!r}") from None

    def __iter__(self):
        return iter(self._views)

    def __len__(self):
        return len(self._views)

    def __repr__(self):
        inner = ", ".join(f"{k}: {v.shape}" for k, v in self._views.items())
        return f"{type(self).__name__}({{{inner}}})"


class Gradients(NamedArrays):
    """Gradients of a loss, from :meth:`LSTM.backward`.

    Attributes
    ----------
    flat : ndarray (P,)
        All parameter gradients, in the layout of ``net.flat``.
    x : ndarray
        dL/dx, shaped like the ``x`` given to ``forward``.
    state : tuple of ndarray
        (dL/dh0, dL/dc0), shaped like the initial state, (L*D, N, H) or
        (L*D, H) for an unbatched sequence.

    ``grads[name]`` is the gradient of ``net.params[name]``, a view into
    ``flat``.
    """

    def __init__(self, flat, views, x, state):
        super().__init__(flat, views)
        self.x = x
        self.state = state


class Cache:
    """What :meth:`LSTM.backward` needs from a training forward pass.

    ``state`` is the final (h_n, c_n), shaped like a state; the rest is
    private.
    """

    def __init__(self, **kw):
        self.__dict__.update(kw)

    def __deepcopy__(self, memo):
        # the arrays copied (none from the pool), the network shared, as it
        # must be; a shallow copy shares the arrays and their lease
        return Cache(**copy.deepcopy(self.__dict__, {id(self.net): self.net, **memo}))


class _Lease:
    """Held by a training cache and its shallow copies: the cache's arrays go
    back to the network's pool when the last of them is freed."""


class _Pool:
    """Buffers that a network's runs reuse rather than allocate: what
    predict and backward use only while they run, given back when they
    return, and what a training cache holds, given back when the cache is
    freed. A fresh array costs page faults on first touch: they were a
    fifth of small_train's samples (exc_page_fault, clear_page and the
    like), 6% of seed_train's.

    A request takes the smallest free buffer that is large enough and at
    most FIT times larger (one buffer serves runs of a shorter T, but a
    large buffer is not spent on a small request). At most MAX_FREE
    buffers are kept, the smallest dropped first. Arrays handed to the
    caller (y, gradients, states) never come from these buffers; see
    zeros_for_caller for backward's gradients.
    """

    MAX_FREE = 32
    FIT = 4

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)
        self.lock = threading.Lock()
        self.free = []    # 1-D buffers, none taken, sorted by size
        # id of a buffer of this pool -> where its first line starts, kept
        # while the buffer lives: reading an array's address (.ctypes.data,
        # 1.3 us) was a third of a take (small_train took 15 a step)
        self._skips = {}
        self._pad = _line_room(self.dtype)
        self._handed = []   # arrays zeros_for_caller gave out, newest last

    def __reduce__(self):
        # a copied or pickled network starts with an empty pool
        return (_Pool, (self.dtype,))

    def take(self, shape):
        n = math.prod(shape)
        need = n + self._pad
        with self.lock:
            # the first buffer at least this large is the best fit
            i = bisect.bisect_left(self.free, need, key=_size)
            buf = None
            if i < len(self.free) and self.free[i].size <= self.FIT * max(need, 1024):
                buf = self.free.pop(i)
        if buf is None:
            buf = np.empty(max(n, 1) + self._pad, self.dtype)
        skip = self._skips.get(id(buf))
        if skip is None:
            skip = _line_skip(buf)
            self._skips[id(buf)] = skip
            weakref.finalize(buf, self._skips.pop, id(buf), None).atexit = False
        return buf[skip:skip + n].reshape(shape)

    def take_many(self, shapes):
        """Arrays of these shapes carved from one buffer, each starting on
        a cache line: one take instead of several (five takes and their
        give took 10 us of the 43-53 us of a call of small_infer's network
        at T = 1). Giving back any of them gives back the whole buffer:
        give them once none is in use."""
        starts, total = _line_starts(shapes, self.dtype)
        flat = self.take((total,))
        return _carve(flat, starts, shapes)

    MAX_HANDED = 2

    def zeros_for_caller(self, like):
        """A zeroed array of like's shape, for the caller to keep (backward's
        gradients): one given out before, if the caller has let go of it and
        of every view of it (nothing else refers to it), else a new one. A
        new array above glibc's largest mmap threshold (32 MB) is mmapped
        afresh, and the kernel zeroes its pages as they are first written:
        the float64 seed network's gradients (34 MB) took 4% of
        seed_train's samples in clear_page."""
        with self.lock:
            for arr in self._handed if _UNREFERENCED else ():
                if sys.getrefcount(arr) == _UNREFERENCED and arr.shape == like.shape:
                    arr[...] = 0
                    return arr
            arr = np.zeros_like(like)
            self._handed = self._handed[1 - self.MAX_HANDED:] + [arr]
            return arr

    def give(self, arrays):
        """Return arrays from take(); the caller no longer uses them."""
        # each buffer once, though several views of it come back
        bufs = {}
        for a in arrays:
            buf = a.base if a.base is not None else a
            bufs[id(buf)] = buf
        with self.lock:
            for buf in bufs.values():
                # and not if it is free already: look among the free
                # buffers of its size
                lo = bisect.bisect_left(self.free, buf.size, key=_size)
                hi = bisect.bisect_right(self.free, buf.size, lo=lo, key=_size)
                if not any(self.free[j] is buf for j in range(lo, hi)):
                    self.free.insert(hi, buf)
            if len(self.free) > self.MAX_FREE:
                del self.free[:len(self.free) - self.MAX_FREE]    # the smallest


_size = operator.attrgetter("size")


def _unreferenced():
    """How many references sys.getrefcount reports for an array that only
    a list refers to, met in a loop over that list as _Pool.zeros_for_caller
    meets it (the list, the loop's name, getrefcount's argument: 3 in the
    CPython versions this was written for), or None where reference counts
    say nothing reliable (a build without the GIL): then nothing is
    reused."""
    if not getattr(sys, "_is_gil_enabled", lambda: True)():
        return None
    for arr in [np.empty(0)]:
        return sys.getrefcount(arr)


_UNREFERENCED = _unreferenced()

# Arrays that two threads write side by side (a split recurrence's parts
# write their units of each row of gates, h, c and the output) start on a
# cache line, so that the parts' halves (lstm_forward's unit bounds are
# multiples of a line) never share one. NumPy aligns to 16 bytes: with
# small_infer's rows straddling lines, the lines went back and forth
# between the cores at every step.
_ALIGN = 64


def _line_room(dtype):
    """Elements past n that a buffer needs for n elements to start on a line."""
    return _ALIGN // dtype.itemsize - 1


def _line_skip(buf):
    """Elements of 1-D buf before its first address on a cache line."""
    return (-buf.ctypes.data % _ALIGN) // buf.itemsize




def _aligned_zeros(shapes, dtype):
    """Arrays of zeros of these shapes, each starting on a cache line (see
    _ALIGN), from one allocation."""
    dtype = np.dtype(dtype)
    starts, total = _line_starts(shapes, dtype)
    buf = np.zeros(total + _line_room(dtype), dtype)
    skip = _line_skip(buf)
    return _carve(buf[skip:], starts, shapes)


def _line_starts(shapes, dtype):
    """Where arrays of these shapes start in one buffer that begins on a
    cache line, each on a line of its own, and the buffer's length."""
    line = _line_room(dtype) + 1    # elements a line
    starts, total = [], 0
    for shape in shapes:
        starts.append(total)
        total += -(-math.prod(shape) // line) * line
    return starts, total


def _carve(buf, starts, shapes):
    """Views of 1-D buf of these shapes, from these starts."""
    return [buf[s:s + math.prod(shape)].reshape(shape) for s, shape in zip(starts, shapes)]


class _Chooser:
    """Chooses, call by call, how a single sequence's recurrence runs: split
    by units between two threads that meet at every step ("units"), not
    split (None: a direction on each thread, or for inference of one
    direction, pipelined with the projection and the head on the other
    thread), or on one thread alone ("one").

    A step of a small network takes about a microsecond, and the meeting
    costs a round trip of a cache line between the two cores, which varies
    on a shared machine: 60-150 ns in some stretches and about 600 ns in
    others on one development VM, 260-410 ns on another. So every
    PROBE_EVERY calls another way runs once (the two others in turn), and
    whichever was faster in its last call is kept; when both others have
    lost, the wait for the next probe doubles (up to PROBE_MAX calls: a
    slower probe costs small_infer a third of a call), and a probe that
    wins starts it again.
    small_infer ran split in 0.69-0.98 ms and pipelined in 0.52-0.74 ms on
    the second VM, split in 1.0-1.3 ms (1.8-2.5 ms in slow stretches) and
    on one thread in 1.45-1.55 ms on the first; with a busy process on one
    of the second VM's cores, pipelined in a median of 4.0 ms and on one
    thread in 0.83 ms. All ways give the same bits (see
    _lstm.lstm_forward's project_whole), so the choice changes speed only.
    Races between threads sharing a network only make a choice worse for a
    while.
    """

    MODES = ("units", None, "one")
    PROBE_EVERY = 16
    PROBE_MAX = 256

    def __init__(self):
        self.mode = "units"
        self.last = dict.fromkeys(self.MODES, math.inf)   # seconds a step
        self.since_probe = 0
        self.every = self.PROBE_EVERY
        self.probing = False
        self.turn = 0

    def choose(self):
        self.probing = self.since_probe >= self.every
        if self.probing:
            others = [m for m in self.MODES if m != self.mode]
            return others[self.turn % len(others)]
        return self.mode

    def record(self, mode, seconds_per_step):
        self.last[mode] = seconds_per_step
        if self.probing:
            self.probing, self.since_probe = False, 0
            if seconds_per_step < self.last[self.mode]:
                self.mode, self.every, self.turn = mode, self.PROBE_EVERY, 0
            else:
                self.turn += 1
                if self.turn % 2 == 0:   # both other ways lost: wait longer
                    self.every = min(2 * self.every, self.PROBE_MAX)
        else:
            self.since_probe += 1


class LSTM:
    """A (stacked, optionally bidirectional) peephole LSTM with an optional
    fully connected head.

    Parameters
    ----------
    input_size : int
        Features per step, I.
    hidden_size : int
        Units per direction, H.
    num_layers : int, default 1
        Stacked layers L; layer k+1 reads layer k's output (D*H wide).
    bidirectional : bool, default False
        Add a reverse direction (D = 2); outputs are [h_fw, h_bw].
    peephole : bool, default True
        Peephole connections p_i, p_f (to c_{t-1}) and p_o (to c_t).
    output_size : int or None, default None
        Add a head y_t = W_fc [h_fw; h_bw]_t + b_fc with O outputs.
    dtype : numpy.float32 or numpy.float64, default float32
    seed : int, numpy.random.Generator or None
        Initialisation: U(-1/sqrt(H), 1/sqrt(H)) for the LSTM, U(-1/sqrt(D*H),
        1/sqrt(D*H)) for the head, as torch.
    batch_first : bool, default False
        Take x as (N, T, I) and return y as (N, T, ...), instead of
        time-major (T, N, I).

    Attributes
    ----------
    flat : ndarray (P,)
        Every parameter, in one contiguous buffer.
    params : mapping
        Seed 000's names to views into ``flat``.

    Notes
    -----
    A network keeps the scratch buffers of its recent runs for the next
    ones (predict's and backward's, and a training cache's once the cache
    is freed): no page faults on each call, at the price of that memory
    staying allocated while the network lives (about one training step's
    worth); the blocks that calls pack weights into are likewise kept for
    the next call, process-wide, 64 MB at most. Runs use two threads where
    that pays (see ``lstmx bench``).
    """

    def __init__(self, input_size, hidden_size, num_layers=1, bidirectional=False,
                 peephole=True, output_size=None, dtype=np.float32, seed=None,
                 batch_first=False):
        self.input_size = check_int(input_size, "input_size")
        self.hidden_size = check_int(hidden_size, "hidden_size")
        self.num_layers = check_int(num_layers, "num_layers")
        self.output_size = None if output_size is None else check_int(output_size, "output_size")
        self.bidirectional = bool(bidirectional)
        self.peephole = bool(peephole)
        self.batch_first = bool(batch_first)
        self.dtype = check_dtype(dtype)
        self.num_directions = 2 if self.bidirectional else 1

        H, D = self.hidden_size, self.num_directions
        self._slots = []
        offset = 0
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else D * H
            for d in range(D):
                slot = _Slot(layer, d, layer_input, H, self.peephole, offset)
                self._slots.append(slot)
                offset = slot.end
        self._lstm_size = offset
        if self.output_size is not None:
            O = self.output_size
            self._fc_w = (offset, (O, D * H))
            self._fc_b = (offset + O * D * H, (O,))
            offset += O * D * H + O
        self.flat = np.empty(offset, dtype=self.dtype)
        self.params = NamedArrays(self.flat, self._named_views(self.flat))
        self._packed = [slot.packed(self.flat) for slot in self._slots]
        # the head's (W, b) as the kernels take them
        self._fc = None
        if self.output_size is not None:
            self._fc = (_view(self.flat, *self._fc_w), _view(self.flat, *self._fc_b))
        self._pool = _Pool(self.dtype)
        # one per kind of run (a training step's steps take longer) and
        # size class of T (see _run)
        self._choosers = {}
        self._no_peep = np.zeros(3 * H, dtype=self.dtype)
        self._no_peep.flags.writeable = False
        self.reset_parameters(seed)

    def _config(self):
        """The constructor's arguments (but seed) that make this network."""
        return dict(input_size=self.input_size, hidden_size=self.hidden_size,
                    num_layers=self.num_layers, bidirectional=self.bidirectional,
                    peephole=self.peephole, output_size=self.output_size, dtype=self.dtype,
                    batch_first=self.batch_first)

    def __reduce__(self):
        # pickle and copy.deepcopy: rebuilt from its configuration and a copy
        # of flat, so that params and the kernels' views are views into the
        # new flat (copied attribute by attribute, they would not be)
        return (_rebuild, (self._config(), self.flat.copy()))

    # ------------------------------------------------------------------
    # parameters

    def _named_views(self, buffer):
        H = self.hidden_size
        views = {}
        for slot in self._slots:
            w_x, w_h, bias, peep = slot.packed(buffer)
            suffix = f"{DIRECTIONS[slot.direction]}_layer{slot.layer + 1}"
            for k, g in enumerate(GATES):
                views[f"W_{g}_x_{suffix}"] = w_x[k * H:(k + 1) * H]
                views[f"W_{g}_h_{suffix}"] = w_h[k * H:(k + 1) * H]
                views[f"b_{g}_{suffix}"] = bias[k * H:(k + 1) * H].reshape(1, H)
            if peep is not None:
                for k, g in enumerate(PEEPHOLE_GATES):
                    views[f"peephole_{g}_c_{suffix}"] = peep[k * H:(k + 1) * H].reshape(1, H)
        if self.output_size is not None:
            views[FC_WEIGHTS] = _view(buffer, *self._fc_w)
            views[FC_BIASES] = _view(buffer, *self._fc_b).reshape(1, -1)
        return views

    def reset_parameters(self, seed=None):
        """Draw every parameter afresh as torch does, reproducibly from seed."""
        rng = np.random.default_rng(seed)
        k = 1.0 / np.sqrt(self.hidden_size)
        self.flat[:self._lstm_size] = rng.uniform(-k, k, self._lstm_size)
        if self.output_size is not None:
            k = 1.0 / np.sqrt(self.num_directions * self.hidden_size)
            n = self.flat.size - self._lstm_size
            self.flat[self._lstm_size:] = rng.uniform(-k, k, n)

    def save(self, path):
        """Write this network to ``path`` as an ``.npz`` of its seed-000
        arrays plus metadata (no pickle; written exactly at ``path``, no
        suffix appended); :func:`lstmx.load` reads it back bit-exactly.
        See :func:`lstmx.persist.save`."""
        from .persist import save
        save(self, path)

    @property
    def num_parameters(self):
        return self.flat.size

    def __repr__(self):
        return (f"LSTM(input_size={self.input_size}, hidden_size={self.hidden_size}, "
                f"num_layers={self.num_layers}, bidirectional={self.bidirectional}, "
                f"peephole={self.peephole}, output_size={self.output_size}, "
                f"dtype={self.dtype.name}, batch_first={self.batch_first})")

    # ------------------------------------------------------------------
    # running

    def _split(self, N, threads=None):
        """How a forward run on N sequences uses two threads besides running
        two directions at once: "units" (see _split_recurrence), "batch"
        (one direction of SPLIT_MIN_BATCH or more sequences: each thread
        runs half of them, which are independent, so that the threads never
        wait for each other), or None."""
        threads = get_num_threads() if threads is None else threads
        if threads == 1:
            return None
        if self._split_recurrence(N, threads):
            return "units"
        if self.num_directions == 1 and N >= SPLIT_MIN_BATCH:
            return "batch"
        return None

    def _split_backward(self, N, threads=None):
        """Whether backward halves the sequences of one direction between
        two threads (each runs its half's BPTT recurrence, then half of the
        rows of each weight gradient)."""
        H = self.hidden_size
        threads = get_num_threads() if threads is None else threads
        return (threads == 2 and self.num_directions == 1 and N >= 2
                and 8 * N * H * H >= BACKWARD_SPLIT_MIN_FLOPS)

    def _split_recurrence(self, N, threads=None):
        """Whether each recurrence is shared by two threads, each holding
        half of the units and so half of W_h, one direction after the other.

        A single sequence's step is a matrix-vector product that reads all
        of W_h (4H x H) for 2 flops a weight: it runs at the speed the core
        reads W_h, so two cores reading a half each take about half the
        time. Split from SPLIT_MIN_BYTES of W_h.

        Two directions of one sequence run on a thread each, with no
        meeting at all, unless a half of W_h fits a core's L2 and the whole
        does not (see SPLIT_L2_OVER): then the split reads from L2 what the
        other way reads from L3.

        One direction of many sequences runs a GEMM per step, which is
        split this way when W_h is larger than a core's L2 (see
        SPLIT_BATCH_MAX_BYTES); else the batch is halved (see _split).
        Two directions run on a thread each instead.
        """
        H = self.hidden_size
        threads = get_num_threads() if threads is None else threads
        if not _lstm.can_split() or threads == 1:
            return False
        w_h_bytes = 4 * H * H * self.dtype.itemsize
        if N == 1 and self.num_directions == 2:
            l2 = l2_cache_bytes()
            if l2 is not None:
                return w_h_bytes > SPLIT_L2_OVER * l2 and w_h_bytes / 2 <= l2
        if N == 1:
            return w_h_bytes > SPLIT_MIN_BYTES
        l2 = l2_cache_bytes() or SPLIT_BATCH_MAX_BYTES
        return (self.num_directions == 1 and N >= SPLIT_MIN_BATCH
                and w_h_bytes > min(SPLIT_BATCH_MAX_BYTES, l2))

    def _by_step(self, split, N, I):
        """Steps per block of the input projection (I features) that each
        job of a forward run of a layer on N sequences, split this way (see
        _split), computes as its steps come, or 0: the projection of all
        steps comes first (and, for a single sequence, is pipelined or
        shared as before).

        Split by units, from BY_STEP_UNITS_MIN_N sequences, each thread
        projects its units' columns of about BY_STEP_ROWS rows at a time,
        which its cells then read from cache, where a projection of all
        steps sends the gates (52 MB in big_infer) to memory and back.
        Otherwise a job runs all units of its sequences (half of the batch,
        a direction, or all) and projects them a step at a time with all
        of W_x, where W_x and W_h, packed, take at most half of a core's L2
        (BY_STEP_MAX_BYTES where Linux does not tell its size): it reads
        both at every step."""
        if N == 1:
            return 0
        if split == "units":
            return max(1, BY_STEP_ROWS // N) if N >= BY_STEP_UNITS_MIN_N else 0
        limit = (l2_cache_bytes() or 2 * BY_STEP_MAX_BYTES) // 2
        return int(4 * self.hidden_size * (I + self.hidden_size) * self.dtype.itemsize <= limit)

    def _split_head(self, R, threads=None):
        """Whether the head's products over R rows (forward: y = h W^T + b;
        backward: dh, dW, db) are halved between two threads (see
        HEAD_SPLIT_MIN_MACS)."""
        threads = get_num_threads() if threads is None else threads
        return threads == 2 and R >= 2 and R * self.num_directions * self.hidden_size * self.output_size >= HEAD_SPLIT_MIN_MACS

    def _kernel_params(self, k):
        """(w_x, w_h, bias, peep) of slot k as the kernels take them."""
        w_x, w_h, bias, peep = self._packed[k]
        return w_x, w_h, bias, self._no_peep if peep is None else peep

    def _prepare(self, x, lengths, state, check_finite):
        x, unbatched = as_sequence_input(x, self.input_size, self.dtype, self.batch_first, check_finite)
        T, N, _ = x.shape
        H, D = self.hidden_size, self.num_directions
        widest = max(4 * H, self.input_size, D * H, self.output_size or 0)
        check_blas_size(T * N * widest)
        lengths, ragged = as_lengths(lengths, T, N)
        # c is written by both parts of a split: on a line
        h, c = as_state(state, "state", self.num_layers * D, N, H, self.dtype, unbatched,
                        check_finite, pair=lambda shape, dt: _aligned_zeros([shape] * 2, dt))
        return x, unbatched, lengths, ragged, h, c

    def _run(self, x, lengths, ragged, h, c, training):
        """Forward through every layer. h, c (L*D, N, H) are updated in place
        to the final state. Returns (y (T, N, O or D*H), top (the last
        layer's output), per-layer records, kept): with training, ``kept``
        lists the arrays from the pool that the records hold, to be given
        back when they are no longer needed; without, it is empty and every
        array from the pool was given back."""
        T, N, _ = x.shape
        H, D, L = self.hidden_size, self.num_directions, self.num_layers
        dt = self.dtype
        empty = np.empty((0, 0, 0), dt)
        # read once: a split run must pair its jobs even if another thread
        # calls set_num_threads meanwhile
        threads = get_num_threads()
        split = self._split(N, threads)
        # A single sequence split by units whose W_h fits the one-row kernel
        # (_lstm.ONE_PACKED_MAX_BYTES, whole and so each half) also runs
        # unsplit from time to time, and the faster way is kept (_Chooser);
        # both ways run that kernel and, with project_whole, give the same
        # bits. Above, one thread reads W_h from L3 and is the slower way
        # whatever the machine does (seed_infer, 1.6 MB: 41-51 ms on one
        # thread against 20-28 ms split).
        chosen = (split == "units" and N == 1
                  and _lstm.packs_one_row(4 * H, H, dt.itemsize))
        if chosen:
            # A call's fixed cost weighs on its time a step in inverse
            # proportion to T, and differs between the ways (small_infer's
            # network at T = 1: 39 us on one thread, 43 pipelined; at
            # T = 1000: 698 and 519 us), so a way is chosen for each power
            # of two of T: short calls do not choose for long ones.
            key = (training, T.bit_length())
            chooser = self._choosers.get(key)
            if chooser is None:
                chooser = self._choosers[key] = _Chooser()
            mode = chooser.choose()
            split = "units" if mode == "units" else None
            if mode == "one":
                threads = 1
            started = time.perf_counter()
        # The chosen sequence of one direction, unsplit: for inference the
        # second thread projects the gates ahead of the recurrence and runs
        # the head behind it (_lstm.lstm_pipe), rather than before and
        # after. The projection is the packed GEMM's, as project_whole's,
        # and a row of the head the same BLAS call's on fewer rows: the
        # bits of the split and of training's forward (tests/test_split.py).
        # small_infer, best ms (one thread, split by units, pipelined):
        # 0.86-0.88, 0.69-0.76, 0.60-0.63.
        pipelined = chosen and split is None and threads == 2 and D == 1 and not training
        # One sequence, a direction a thread: each projects its inputs on
        # the packed GEMM as project_whole does, rather than with BLAS,
        # which copied X for each block of W_x (sgemm_incopy 6.6% of
        # seed_infer's samples). Median of paired blocks in one process,
        # packed / BLAS: seed_infer 0.980, bidirectional I16 H64 T1000
        # 0.962, I64 H128 2 layers 0.977, I256 H256 0.978; not for N = 32
        # (seed network, training forward 0.996, predict 1.008). Split by
        # units too, since each part packs its rows of X rather than all
        # of W_x (_lstm._gemm_packed_a; before, H512 1.018): float64
        # seed_infer 0.903 (27.6 -> 24.9 ms), I360 H320 T200 0.908, f32
        # I512 H512 T100 0.973, bidirectional 0.965.
        project_whole = N == 1 and (chosen or split == "units" or (split is None and D == 2))
        pack_w_h = chosen or T >= ONE_PACKED_MIN_STEPS
        project_in_place = N == 1 and not chosen and T <= PROJECT_IN_PLACE_MAX_ROWS
        y = None
        pool = self._pool
        temps, kept = [], []

        def take(shape, keep=False):
            arr = pool.take(shape)
            (kept if keep else temps).append(arr)
            return arr

        # Each layer's jobs project their inputs as the steps come, or not
        # (see _by_step). When all do, and all of them forwards or over
        # sequences of T steps, inference keeps only a block of steps of
        # gates (ring): big_infer's 52 MB of them become 2 MB.
        by_steps = [self._by_step(split, N, self.input_size if layer == 0 else D * H)
                    for layer in range(L)]
        ring = not training and all(by_steps) and not (D == 2 and ragged)
        # per thread: the recurrent term of a step (rec); per direction: h
        # of the step before and of this one (h_buf) and, for inference,
        # the gates
        gate_steps = min(max(by_steps), T) if ring else T
        work = pool.take_many([(N, 4 * H)] * 2 + [(2, N, H)] * D
                              + ([] if training else [(gate_steps, N, 4 * H)] * D))
        temps.extend(work)
        rec, h_buf = work[:2], work[2:2 + D]
        gates = None if training else work[2 + D:]
        layers = []
        inp = x
        for layer in range(L):
            if layer == L - 1 and self.output_size is None:
                out = _aligned_zeros([(T, N, D * H)], dt)[0]   # returned
            else:
                # padded steps must read zero (the kernels write valid
                # steps only)
                out = pool.take((T, N, D * H))
                if training:
                    kept.append(out)
                if ragged:
                    out[...] = 0
            if training:
                record = [tuple(take(shape, keep=True)
                                for shape in ((T, N, 4 * H), (T, N, H), (T, N, H)))
                          for _ in range(D)]
            else:
                record = [(gates[d], empty, empty) for d in range(D)]
            for d in range(D):
                h_buf[d][0] = h[layer * D + d]

            def job(d, thread, part=0, nparts=1, barrier=None, n0=0, n1=-1, pipe=None,
                    projected=False, by_step=0, layer=layer, inp=inp, out=out,
                    record=record):
                # direction d on thread `thread`: all of it, its units' part
                # `part` of `nparts`, or its sequences n0..n1-1; projected:
                # the gates hold the projection already, or (with pipe) an
                # lstm_pipe job computes it at the same time; by_step: the
                # job projects by_step steps at a time as it goes (and with
                # ring, into a block of steps of gates)
                k = layer * D + d
                w_x, w_h, bias, peep = self._kernel_params(k)
                x_in = empty if projected else inp
                return _lstm.lstm_forward(x_in, w_x, w_h, bias, peep, lengths, d == 1, h_buf[d],
                                          c[k], out, d * H, *record[d], rec[thread], part,
                                          nparts, barrier, n0, n1, project_whole=project_whole,
                                          pipe=pipe, by_step=by_step, ring=ring and by_step > 0,
                                          pack_w_h=pack_w_h, project_in_place=project_in_place,
                                          defer=True)

            by_step = by_steps[layer]
            if split == "batch" or (split == "units" and N > 1):
                # one direction of many sequences: each thread runs half of
                # the sequences ("batch") or, meeting the other at every
                # step, half of the units ("units"). Each projects its own
                # as the steps come (by_step), or else each first projects
                # half of the steps (for "units" by rows rather than by a
                # part's columns of each gate, one GEMM a gate block, each
                # of which copied all of X for BLAS)
                if not by_step:
                    w_x, projected = self._packed[layer][0], record[0][0]
                    if T > 1:
                        _pair(_lstm.lstm_project(inp[:T // 2], w_x, projected[:T // 2],
                                                 defer=True),
                              _lstm.lstm_project(inp[T // 2:], w_x, projected[T // 2:],
                                                 defer=True), threads)
                    else:
                        _lstm.lstm_project(inp, w_x, projected)
                how = {"by_step": by_step, "projected": not by_step}
                if split == "batch":
                    _pair(job(0, 0, n0=0, n1=N // 2, **how),
                          job(0, 1, n0=N // 2, n1=N, **how), threads)
                else:
                    barrier = np.zeros(2, np.intc)
                    _pair(job(0, 0, 0, 2, barrier, **how), job(0, 1, 1, 2, barrier, **how),
                          threads)
            elif split == "units":
                # each direction in turn, its units halved between two
                # threads that meet at every step (see _split_recurrence)
                for d in range(D):
                    barrier = np.zeros(2, np.intc)
                    _pair(job(d, 0, 0, 2, barrier), job(d, 1, 1, 2, barrier), threads)
            elif D == 2:
                # the directions at once, on two threads (see _threads)
                _pair(job(0, 0, by_step=by_step), job(1, 1, by_step=0 if ragged else by_step),
                      threads)
            elif pipelined:
                pipe = np.zeros(2, np.intc)
                head = ()
                if layer == L - 1 and self.output_size is not None:
                    y = np.empty((T, N, self.output_size), dt)
                    head = (*self._fc, y)
                _pair(job(0, 0, pipe=pipe, projected=True),
                      _lstm.lstm_pipe(inp, self._packed[layer][0], record[0][0], pipe, out,
                                      *head, defer=True), threads)
            else:
                job(0, 0, by_step=by_step).run()
            for d in range(D):
                h[layer * D + d] = h_buf[d][T % 2]
            layers.append((inp, record))
            if not training and layer > 0:
                pool.give([inp])        # read by this layer, needed no more
            inp = out
        if chosen:
            chooser.record(mode, (time.perf_counter() - started) / (T * L))
        top = inp
        if self.output_size is None:
            y = top
        else:
            if y is None:   # (else the pipeline ran the head)
                w_fc, b_fc = self._fc
                y = np.empty((T, N, self.output_size), dt)
                args = (top.reshape(T * N, D * H), w_fc, b_fc, y.reshape(T * N, -1))
                if self._split_head(T * N, threads):
                    _pair(_lstm.linear_forward(*args, 0, 2, defer=True),
                          _lstm.linear_forward(*args, 1, 2, defer=True), threads)
                else:
                    _lstm.linear_forward(*args)
            if ragged:
                y[_padding_mask(lengths, T)] = 0
            if not training:
                temps.append(top)
        pool.give(temps)
        return y, top, layers, kept

    def _to_user(self, y, unbatched):
        """Time-major (T, N, ...) -> the caller's layout."""
        if unbatched:
            return y[:, 0]
        if self.batch_first:
            return np.ascontiguousarray(y.transpose(1, 0, 2))
        return y

    def _state_to_user(self, h, c, unbatched):
        if unbatched:
            return h[:, 0], c[:, 0]
        return h, c

    def predict(self, x, lengths=None, state=None, return_state=False, check_finite=True):
        """Run the network for inference.

        Parameters
        ----------
        x : array_like (T, N, I), or (N, T, I) with batch_first, or (T, I)
            Input sequences; converted to the network's dtype.
        lengths : array_like of int (N,), optional
            Valid steps per sequence, 1 <= l <= T; padded steps give zeros.
        state : (h0, c0), optional
            Initial state, each (L*D, N, H) ((L*D, H) for unbatched x),
            ordered layer-major then direction. Zeros when omitted.
        return_state : bool
            Also return the final (h_n, c_n), e.g. to carry across chunks.
        check_finite : bool
            Refuse NaN or inf in x and state.

        Returns
        -------
        y : ndarray (T, N, O) with a head, else (T, N, D*H) (laid out like x)
        state : (h_n, c_n), only with return_state
        """
        x, unbatched, lengths, ragged, h, c = self._prepare(x, lengths, state, check_finite)
        with blas_held():
            y, _, _, _ = self._run(x, lengths, ragged, h, c, training=False)
        y = self._to_user(y, unbatched)
        if return_state:
            return y, self._state_to_user(h, c, unbatched)
        return y

    def forward(self, x, lengths=None, state=None, check_finite=True):
        """Training forward pass: like :meth:`predict`, but keeps what
        :meth:`backward` needs.

        Returns
        -------
        y : ndarray, as from predict
        cache : Cache
            Pass to :meth:`backward`; ``cache.state`` is the final (h_n, c_n).
        """
        x, unbatched, lengths, ragged, h, c = self._prepare(x, lengths, state, check_finite)
        c0 = c.copy()
        with blas_held():
            y, top, layers, kept = self._run(x, lengths, ragged, h, c, training=True)
        y_user = self._to_user(y, unbatched)
        cache = Cache(net=self, layers=layers, top=top, c0=c0, lengths=lengths,
                      ragged=ragged, unbatched=unbatched, y_shape=y_user.shape,
                      state=self._state_to_user(h, c, unbatched))
        # the cache's arrays go back to the pool when the cache and its
        # shallow copies are freed
        cache._lease = _Lease()
        weakref.finalize(cache._lease, self._pool.give, kept)
        return y_user, cache

    def backward(self, dy, cache, dstate=None, check_finite=True, input_grad=True):
        """Exact gradients by backpropagation through time.

        Parameters
        ----------
        dy : array_like
            dL/dy, the shape of y from :meth:`forward`.
        cache : Cache
            From :meth:`forward` on this network, with the parameters
            unchanged since.
        dstate : (dh_n, dc_n), optional
            dL/d(final state), shaped like a state, for losses on the final
            state or truncated BPTT. Zeros when omitted.
        check_finite : bool
            Refuse NaN or inf in dy and dstate.
        input_grad : bool
            Compute dL/dx (``grads.x``). False skips the first layer's dX
            GEMM (7% of a training step's flops at the seed network's
            sizes) and leaves ``grads.x`` None: for training, where x is
            data.

        Returns
        -------
        Gradients
            ``.flat`` in net.flat's layout, ``grads[name]``, ``.x`` (None
            without input_grad) and ``.state`` = (dh0, dc0).
        """
        if not isinstance(cache, Cache) or getattr(cache, "net", None) is not self:
            raise ValueError("cache: expected the cache returned by forward() of this network")
        dt = self.dtype
        dy = as_float_array(dy, "dy", dt, check_finite)
        if dy.shape != cache.y_shape:
            raise ValueError(f"dy: expected shape {cache.y_shape} (the shape of y), got {dy.shape}")
        T, N = cache.top.shape[:2]
        H, D = self.hidden_size, self.num_directions
        if cache.unbatched:
            dy = dy[:, None, :]
        elif self.batch_first:
            dy = dy.transpose(1, 0, 2)
        if cache.ragged:
            # padded steps get no gradient (a new array: the caller's stays)
            dy = np.where(_padding_mask(cache.lengths, T)[:, :, None], 0, dy).astype(dt, copy=False)
        dy = np.ascontiguousarray(dy)
        dh_n, dc_n = as_state(dstate, "dstate", self.num_layers * D, N, H, dt, cache.unbatched, check_finite)

        if not isinstance(input_grad, (bool, np.bool_)):
            raise TypeError(f"input_grad: expected a bool, got {type(input_grad).__name__}")
        pool = self._pool
        flat = pool.zeros_for_caller(self.flat)
        grad_parts = [slot.packed(flat) for slot in self._slots]   # (dw_x, dw_h, dbias, dpeep)
        temps = []      # from the pool, given back at the end

        def take(shape):
            arr = pool.take(shape)
            temps.append(arr)
            return arr

        empty = np.empty((0, 0, 0), dt)
        threads = get_num_threads()
        with blas_held():
            if self.output_size is None:
                dtop = dy
            else:
                dtop = take((T, N, D * H))
                args = (cache.top.reshape(T * N, D * H), self._fc[0],
                        dy.reshape(T * N, -1), dtop.reshape(T * N, D * H),
                        _view(flat, *self._fc_w), _view(flat, *self._fc_b))
                if self._split_head(T * N, threads):
                    _pair(_lstm.linear_backward(*args, 0, 2, defer=True),
                          _lstm.linear_backward(*args, 1, 2, defer=True), threads)
                else:
                    _lstm.linear_backward(*args)
            dh0 = np.empty_like(dh_n)
            dc0 = np.empty_like(dc_n)
            # per direction: dgates, drec, dh_rec; then dbias and dpeep of a
            # halved batch's second half (sums[1]), and the discarded dpeep
            # of a net without peepholes, one per job
            arrs = pool.take_many([(T, N, 4 * H), (N, 4 * H), (N, H)] * D
                                  + [(4 * H,), (3 * H,)] * 2)
            temps.extend(arrs)
            work = [tuple(arrs[3 * d:3 * d + 3]) for d in range(D)]
            sums = [tuple(arrs[3 * D + 2 * i:3 * D + 2 * i + 2]) for i in range(2)]
            halves = (0, N // 2, N) if self._split_backward(N, threads) else None
            for layer in range(self.num_layers - 1, -1, -1):
                inp, record = cache.layers[layer]
                # with two directions, each has its own dL/d(input); the
                # first layer's is returned (a new array), or not computed
                if layer > 0:
                    dinp = [take(inp.shape) for _ in range(D)]
                elif input_grad:
                    dinp = [np.empty(inp.shape, dt)] + [take(inp.shape) for _ in range(D - 1)]
                else:
                    dinp = [empty] * D

                def recurrence(d, n0=0, n1=-1, layer=layer, record=record):
                    # a job: direction d's BPTT recurrence, or its sequences n0..n1-1
                    k = layer * D + d
                    _, w_h, _, peep = self._kernel_params(k)
                    _, _, dbias, dpeep = grad_parts[k]
                    if n0 > 0:
                        # a halved batch's second half: its own sums, added after
                        dbias, dpeep = sums[1]
                    elif dpeep is None:
                        dpeep = sums[d][1]   # discarded; one per job running at once
                    gates, c_all, _ = record[d]
                    dgates, drec, dh_rec = work[d]
                    return _lstm.lstm_backward(w_h, peep, cache.lengths, d == 1, cache.c0[k], gates,
                                               c_all, dtop, d * H, dh_n[k], dc_n[k], dbias, dpeep,
                                               dh0[k], dc0[k], dgates, drec, dh_rec, n0, n1,
                                               defer=True)

                def weights(d, part=0, nparts=1, layer=layer, inp=inp, record=record, dinp=dinp):
                    # dW_x, dW_h and dX as GEMMs over all steps, or a part of
                    # their rows
                    k = layer * D + d
                    dw_x, dw_h, _, _ = grad_parts[k]
                    return _lstm.lstm_backward_weights(inp, self._kernel_params(k)[0], record[d][2],
                                                       work[d][0], dw_x, dw_h, dinp[d], False,
                                                       part, nparts, defer=True)

                if halves is None and D == 2:
                    # the two directions on two threads
                    _pair(recurrence(0), recurrence(1), threads)
                    _pair(weights(0), weights(1), threads)
                elif halves is None:
                    recurrence(0).run()
                    weights(0).run()
                else:
                    # one direction: each thread runs half of the sequences,
                    # then half of the rows of each weight gradient
                    _pair(recurrence(0, halves[0], halves[1]),
                          recurrence(0, halves[1], halves[2]), threads)
                    dbias, dpeep = grad_parts[layer][2:]    # (one direction: k = layer)
                    dbias += sums[1][0]
                    if dpeep is not None:
                        dpeep += sums[1][1]
                    _pair(weights(0, 0, 2), weights(0, 1, 2), threads)
                dtop = dinp[0]
                if D == 2 and dtop.size:
                    dtop += dinp[1]
        pool.give(temps)
        dx = self._to_user(dtop, cache.unbatched) if input_grad else None
        state = self._state_to_user(dh0, dc0, cache.unbatched)
        return Gradients(flat, lambda: self._named_views(flat), dx, state)


def _rebuild(config, flat):
    net = LSTM(**config, seed=0)
    net.flat[...] = flat
    return net


def _pair(a, b, threads):
    """Run two kernel jobs at once (_lstm.run_pair), or, on one thread
    (``threads``, read when the run chose how to split), one after the other:
    only independent jobs are paired then, no split recurrence."""
    if threads == 1:
        a.run()
        b.run()
    else:
        _lstm.run_pair(a, b)


def _padding_mask(lengths, T):
    """(T, N) boolean mask of padded steps, t >= lengths[n]."""
    return np.arange(T)[:, None] >= lengths[None, :]
