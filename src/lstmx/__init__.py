"""lstmx: fast, exact peephole LSTMs for CPUs.

C and Cython kernels (scipy's BLAS for the big GEMMs) under a NumPy API: stacked and
bidirectional peephole LSTMs with a fully connected head, forward and exact
backpropagation through time, in float32 and float64.

>>> import numpy as np, lstmx
>>> net = lstmx.LSTM(input_size=3, hidden_size=4, output_size=2, seed=0)
>>> net.predict(np.zeros((5, 1, 3))).shape
(5, 1, 2)
"""
from ._version import __version__
from .lstm import LSTM, Cache, Gradients
from . import io
from . import losses, optim
from .persist import load
from .training import fit
from ._threads import get_num_threads, set_num_threads
from ._denormals import get_flush_denormals, set_flush_denormals

__all__ = ["LSTM", "Cache", "Gradients", "io", "losses", "optim", "load", "fit",
           "get_num_threads", "set_num_threads", "get_flush_denormals", "set_flush_denormals",
           "__version__"]
