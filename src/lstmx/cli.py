"""The ``lstmx`` command line (also ``python -m lstmx``).

    lstmx info                           versions, dtypes, scipy's BLAS, threads
    lstmx predict MODEL DATA --out Y.npy run a saved network on saved inputs
    lstmx demo [--quick]                 learn precise timing (Gers et al., 2002)
    lstmx train DATA --hidden H --out M  train on saved sequences, with checkpoints
    lstmx convert IN OUT                 convert a network between file formats
    lstmx bench [--quick]                time lstmx against torch and onnxruntime

Every failure the user can cause -- a missing or malformed file, a bad
argument, an input of the wrong shape -- ends with a one-line message on
stderr and a non-zero exit status (1: the command failed, 2: the command
line is wrong), never with a traceback.

Adding a subcommand
-------------------
Write a function ``run(args) -> int | None`` (None means success) whose
docstring is the subcommand's ``--help`` text, and register it with
:func:`command`, declaring its arguments with :func:`argument`::

    @command("convert", "convert a network between file formats",
             argument("src", metavar="SRC", help="..."),
             argument("--to", choices=["npz", "onnx"], required=True))
    def _convert(args):
        \"\"\"Convert ...\"\"\"
        from . import io   # optional peers are imported inside the command

Subcommands are listed in ``lstmx --help`` in the order they are
registered. Raise ValueError (bad input), TypeError or OSError (files) for
errors the user should see as one line. Import torch, onnx and other
optional or heavy packages inside ``run``: ``lstmx --help`` must stay as
light as ``import lstmx``.
"""
import argparse
import inspect
import json
import os
import platform
import sys

import numpy as np

from . import __version__, _lstm
from ._threads import get_num_threads, l2_cache_bytes
from ._denormals import get_flush_denormals

__all__ = ["main", "command", "argument"]

# name -> (help, description, arguments, run), in registration order
_COMMANDS = {}


def argument(*flags, **options):
    """One argument of a subcommand: what ``parser.add_argument`` takes."""
    return flags, options


def command(name, help, *arguments):
    """Register ``run(args)`` as subcommand ``name`` (a decorator).

    ``help`` is its one-line summary in ``lstmx --help``; ``run``'s
    docstring becomes its ``lstmx NAME --help`` description; ``arguments``
    are :func:`argument` declarations.
    """
    def register(run):
        if name in _COMMANDS:
            raise ValueError(f"subcommand {name!r} is registered twice")
        description = inspect.cleandoc(run.__doc__ or help)
        _COMMANDS[name] = (help, description, arguments, run)
        return run
    return register


class _UsageError(Exception):
    """A wrong command line, already worded as argparse would."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        # argparse prints the whole usage and exits; one line (and a hint)
        # reads better in a log and lets main() decide the exit.
        raise _UsageError(f"{self.prog}: error: {message} (see '{self.prog} --help')")


def _build_parser(prog):
    parser = _Parser(
        prog=prog,
        description="lstmx: fast, exact peephole LSTMs for CPUs.",
        epilog=f"'{prog} COMMAND --help' describes a command.",
    )
    parser.add_argument("--version", action="version", version=f"lstmx {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     title="commands")
    for name, (help, description, arguments, run) in _COMMANDS.items():
        sub = commands.add_parser(name, help=help, description=description,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        for flags, options in arguments:
            sub.add_argument(*flags, **options)
        sub.set_defaults(run=run)
    return parser


def _one_line(exc):
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv=None, prog="lstmx"):
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the
    exit status: 0 success, 1 the command failed, 2 a wrong command line."""
    parser = _build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(exc, file=sys.stderr)
        return 2
    except SystemExit as exc:   # --help, --version: printed, nothing to run
        return exc.code if isinstance(exc.code, int) else 0
    try:
        return args.run(args) or 0
    except (ValueError, TypeError, OSError) as exc:
        print(f"{prog} {args.command}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# ----------------------------------------------------------------------
# info

_THREAD_VARIABLES = ("LSTMX_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                     "MKL_NUM_THREADS")


def _scipy_blas():
    """The BLAS scipy was built against (what lstmx calls), from its build
    configuration."""
    import scipy
    try:
        config = scipy.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
    except (AttributeError, ImportError, KeyError, TypeError):   # an unusual scipy build
        return {"name": "unknown"}
    keys = ("name", "version", "openblas configuration", "has ilp64")
    return {k: blas[k] for k in keys if k in blas}


def _threadpools():
    """threadpoolctl's view of the loaded BLAS/OpenMP pools, or None when
    threadpoolctl is not installed (it is optional)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    keys = ("user_api", "internal_api", "version", "num_threads", "threading_layer",
            "architecture", "filepath")
    return [{k: pool[k] for k in keys if k in pool} for pool in threadpool_info()]


def _info_report():
    import scipy
    from ._validation import FLOAT_DTYPES

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:   # not on Linux
        usable = None
    return {
        "lstmx": __version__,
        "location": os.path.dirname(os.path.abspath(__file__)),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": platform.platform(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "dtypes": [dt.name for dt in FLOAT_DTYPES],
        "kernels": _lstm.kernel_target(),
        # per dtype: subnormals flushed to zero in the kernels (effective
        # only where the CPU can: x86-64)
        "flush_denormals": {dt: on and _lstm.can_flush()
                            for dt, on in get_flush_denormals().items()},
        "blas": _scipy_blas(),
        "threads": {
            "lstmx_threads": get_num_threads(),
            "cpu_count": os.cpu_count(),
            "usable_cpus": usable,
            "l2_cache_bytes": l2_cache_bytes(),
            **{name: os.environ.get(name) for name in _THREAD_VARIABLES},
        },
        "threadpoolctl": _threadpools(),
    }


def _print_info(report):
    blas = report["blas"]
    threads = report["threads"]
    rows = [(key, report[key]) for key in
            ("lstmx", "location", "python", "platform", "numpy", "scipy")]
    rows.append(("dtypes", ", ".join(report["dtypes"])))
    rows.append(("kernels", f"{report['kernels']} (lstmx's own, chosen for this CPU)"))
    rows.append(("subnormals", ", ".join(f"{dt} {'flushed to zero' if on else 'kept'}"
                                         for dt, on in report["flush_denormals"].items())
                 + " (lstmx.set_flush_denormals)"))
    text = " ".join(str(blas[k]) for k in ("name", "version") if k in blas)
    if "has ilp64" in blas:
        text += ", ILP64" if blas["has ilp64"] else ", LP64"
    rows.append(("blas", text + " (scipy's, called through scipy.linalg.cython_blas)"))
    if "openblas configuration" in blas:
        rows.append(("", blas["openblas configuration"]))
    usable = threads["usable_cpus"]
    rows.append(("lstmx threads", f"{threads['lstmx_threads']} (lstmx.set_num_threads)"))
    rows.append(("cpus", f"{threads['cpu_count']}"
                 + ("" if usable is None else f" ({usable} usable by this process)")))
    l2 = threads["l2_cache_bytes"]
    rows.append(("l2 cache", "(unknown)" if l2 is None else f"{l2 // 1024} KB a core"
                 " (a bidirectional single sequence's split depends on it)"))
    for name in _THREAD_VARIABLES:
        rows.append((name, "(unset)" if threads[name] is None else threads[name]))
    pools = report["threadpoolctl"]
    if pools is None:
        rows.append(("threadpools", "(install threadpoolctl to list them)"))
    elif not pools:
        rows.append(("threadpools", "(none loaded)"))
    for k, pool in enumerate(pools or ()):
        head = " ".join(str(pool[key]) for key in ("user_api", "internal_api", "version")
                        if key in pool)
        extra = ", ".join(f"{key}={pool[key]}" for key in
                          ("num_threads", "threading_layer", "architecture") if key in pool)
        rows.append(("threadpools" if k == 0 else "", f"{head}: {extra}"))
        rows.append(("", f"  {pool.get('filepath', '')}"))
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


@command("info", "show versions, supported dtypes, scipy's BLAS and thread settings",
         argument("--json", action="store_true", help="print the report as JSON"))
def _info(args):
    """Show what lstmx runs on: its version and location, NumPy's and
    SciPy's versions, the dtypes it computes in, the BLAS that SciPy
    provides (lstmx calls it through scipy.linalg.cython_blas and links
    none of its own), and the settings that decide how many threads it
    uses: lstmx's own (LSTMX_NUM_THREADS, lstmx.set_num_threads),
    OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS, the CPU count,
    and the thread pools threadpoolctl sees if it is installed.

    Paste its output into bug reports about speed.
    """
    report = _info_report()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_info(report)


# ----------------------------------------------------------------------
# predict

_NPZ_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")   # zip: first member / empty archive
_NPY_MAGIC = b"\x93NUMPY"


def _read_data(path):
    """(x, lengths or None) from an .npz holding ``x`` (and optionally
    ``lengths``) or an .npy holding x. Never unpickles."""
    with open(path, "rb") as f:
        magic = f.read(len(_NPY_MAGIC))
        f.seek(0)
        if magic.startswith(_NPZ_MAGICS):
            kind = ".npz"
        elif magic == _NPY_MAGIC:
            kind = ".npy"
        else:
            raise ValueError(f"{path}: expected an .npz holding 'x' (and optionally 'lengths') "
                             f"or an .npy holding x")
        try:
            if kind == ".npy":
                names, x, lengths = ["x"], np.load(f, allow_pickle=False), None
            else:
                with np.load(f, allow_pickle=False) as archive:
                    names = archive.files
                    x = archive["x"] if "x" in names else None
                    lengths = archive["lengths"] if "lengths" in names else None
        except Exception as exc:   # corrupt bytes: whatever zipfile, zlib or numpy raised
            raise ValueError(f"{path}: not a readable {kind} ({type(exc).__name__}: {exc})") from None
    if x is None:
        found = ", ".join(repr(n) for n in names) or "no arrays"
        raise ValueError(f"{path}: expected an array named 'x' (and optionally 'lengths'), "
                         f"found {found}")
    return x, lengths


@command(
    "predict", "run a saved network on input sequences and save its output",
    argument("model", metavar="MODEL",
             help="a network written by net.save() (.npz), a plain .npz of seed-000 "
                  "arrays, or a legacy .npy dict of them"),
    argument("data", metavar="DATA",
             help="an .npz holding x and optionally lengths, or an .npy holding x"),
    argument("--out", "-o", required=True, metavar="Y.npy",
             help="where to write y, as .npy (exactly this path: no suffix is added)"),
    argument("--batch-first", action=argparse.BooleanOptionalAction, default=None,
             help="x is (N, T, I) rather than (T, N, I); default: as the model was saved"),
)
def _predict(args):
    """Run a saved network for inference on the sequences in DATA and write
    its output y to --out as an .npy file.

    DATA holds x, shaped (T, N, I) (time-major), (N, T, I) with
    --batch-first, or (T, I) for one sequence, and optionally lengths (N,),
    the true length of each sequence: padded steps give zeros. y is
    (T, N, O) with a head, else (T, N, D*H), laid out like x, in the
    model's dtype. Nothing is unpickled from DATA; MODEL is read by
    lstmx.load, which executes nothing from a file either.
    """
    from ._validation import _shape_text
    from .persist import load, write_atomically

    net = load(args.model, batch_first=args.batch_first)
    x, lengths = _read_data(args.data)
    try:
        y = net.predict(x, lengths=lengths)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{args.data}: {exc}") from None
    # to a file object: np.save(path) would append .npy
    write_atomically(args.out, lambda f: np.save(f, y, allow_pickle=False))
    print(f"{args.out}: y {_shape_text(y.shape)} {y.dtype.name}")


# ----------------------------------------------------------------------
# convert

def _usage_error(command, message):
    """Print a wrong-request error as argparse would word it; exit status 2."""
    print(f"lstmx {command}: error: {_one_line(message)} (see 'lstmx {command} --help')",
          file=sys.stderr)
    return 2


from .convert import FORMATS as _FORMAT_NAMES   # light: numpy only


@command(
    "convert", "convert a network between lstmx .npz, seed-000 .npz, legacy .npy, torch and ONNX",
    argument("src", metavar="IN", help="the network to read"),
    argument("dst", metavar="OUT", help="where to write it (exactly this path)"),
    argument("--format-in", choices=_FORMAT_NAMES, metavar="F",
             help="format of IN (default: from its suffix): " + ", ".join(_FORMAT_NAMES)),
    argument("--format-out", choices=_FORMAT_NAMES, metavar="F",
             help="format of OUT (default: from its suffix): lstmx-npz, seed000-npz, torch, "
                  "onnx (legacy-npy is refused)"),
    argument("--dtype", choices=("float32", "float64"),
             help="convert the parameters to this dtype before writing (ONNX needs float32)"),
)
def _convert(args):
    """Read the network in IN and write it to OUT in another format.

    Formats, by suffix unless --format-in/--format-out name them:

      .npz        lstmx-npz: what net.save writes (seed-000 arrays + metadata);
                  reading any .npz or .npy auto-detects the form (lstmx.load)
      (named)     seed000-npz: only the seed-000-named arrays, no metadata
      .npy        legacy-npy: the legacy pickled dict; read only (read without
                  running code; lstmx never writes pickles)
      .pt, .pth   torch: a state_dict of torch.nn.LSTM (+ nn.Linear head), read
                  with torch.load(weights_only=True); written with keys
                  lstm.weight_ih_l0, ..., linear.weight, linear.bias
      .onnx       onnx: lstmx.io.to_onnx / from_onnx (float32)

    torch has no peepholes: a peephole network cannot be written as torch.
    torch and onnx are needed only for their formats. See docs/formats.md.
    Exit status: 0 done, 1 a file could not be read or written, 2 a wrong
    request (unknown suffix or format, writing .npy).
    """
    from .convert import FormatError, convert

    try:
        net = convert(args.src, args.dst, args.format_in, args.format_out, dtype=args.dtype)
    except FormatError as exc:
        return _usage_error("convert", exc)
    except ImportError as exc:   # torch or onnx missing
        print(f"lstmx convert: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    from .convert import format_of
    print(f"{args.dst}: {format_of(args.dst, args.format_out, writing=True)}, {net!r}")


# ----------------------------------------------------------------------
# bench

@command(
    "bench", "time lstmx against torch and onnxruntime on the benchmark workloads",
    argument("--quick", action="store_true", help="shorter timings and a smaller sgemm"),
    argument("--workload", nargs="+", action="extend", metavar="NAME",
             help="workloads to run (default: all); see the list below"),
    argument("--json", metavar="OUT", help="also write the results to OUT as JSON"),
)
def _bench(args):
    """Time the benchmark workloads (lstmx._bench.WORKLOADS: seed_infer,
    small_infer, big_infer, seed_train, small_train) with lstmx and, when
    installed, torch.nn.LSTM and onnxruntime, in this process with the same
    threads, and print one row per workload: the best time of lstmx with
    peepholes and without ('plain'), torch and onnxruntime ('-' when not
    installed or not applicable), the ratios lstmx/peer, and lstmx's GFLOP/s
    (matrix products only) against the sgemm peak measured first. The runs
    alternate in blocks of about 0.25 s (0.1 s with --quick); a ratio is
    the median over blocks of the two best times in the same block, so that
    a slow stretch of the machine weighs on both sides of it.

    Machines are noisy: compare runs on the same machine, and report them
    with 'lstmx info'.
    """
    from . import _bench

    names = args.workload or list(_bench.WORKLOADS)
    unknown = [n for n in names if n not in _bench.WORKLOADS]
    if unknown:
        return _usage_error("bench", f"unknown workload {', '.join(map(repr, unknown))}; "
                                     f"choose from {', '.join(_bench.WORKLOADS)}")
    rows = _bench.run_all(names, quick=args.quick)
    if args.json:
        report = {"quick": args.quick, "threads": _bench.THREADS,
                  "workloads": {n: {**vars(_bench.WORKLOADS[n]), "id": _bench.WORKLOADS[n].id,
                                    "flops": _bench.WORKLOADS[n].flops()} for n in names},
                  "results": rows, "info": _info_report()}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
        print(f"{args.json}: results of {len(rows)} workload(s)")


# ----------------------------------------------------------------------
# demo

@command(
    "demo", "train peephole and plain LSTMs on a precise-timing task (Gers et al., 2002)",
    argument("--seed", type=int, default=0, help="seed of the data and the runs (default 0)"),
    argument("--epochs", type=int, default=40, help="most epochs per run (default 40)"),
    argument("--runs", type=int, default=5, help="runs per variant (default 5)"),
    argument("--quick", action="store_true", help="a few seconds: tiny data, one short run each"),
)
def _demo(args):
    """Train small LSTMs, with and without peephole connections, on the
    Measuring Spike Delays task of Gers, Schraudolph & Schmidhuber (2002),
    "Learning Precise Timing with LSTM Recurrent Networks", JMLR 3:115-143:
    spikes come 10 + I(n) steps apart, I(n) in {0, 1, 2}, and at each spike
    the network must output I(n). Prints each epoch, then whether each run
    solves the paper's criterion (|error| < 0.49 at every spike of an unbroken
    stream of 1000 spikes) next to what the paper reports. The data is
    generated in code; nothing is downloaded. Under a minute; see
    lstmx.demo for the details.
    """
    from . import demo
    from ._validation import check_int

    check_int(args.epochs, "--epochs")
    check_int(args.runs, "--runs")
    demo.run(seed=args.seed, epochs=args.epochs, runs=args.runs, quick=args.quick)


# ----------------------------------------------------------------------
# train

@command(
    "train", "train a network on sequences in an .npz, with checkpoints and --resume",
    argument("data", metavar="DATA",
             help="an .npz holding x (T, N, I), y and optionally lengths (N,); or x_flat "
                  "(sum T_i, I), y_flat and lengths (N,): variable-length sequences end to end"),
    argument("--hidden", type=int, metavar="H", help="hidden units per direction (required "
             "unless --resume)"),
    argument("--layers", type=int, metavar="L", help="stacked layers (default 1)"),
    argument("--bidirectional", action="store_true", default=None,
             help="add a reverse direction"),
    argument("--no-peephole", dest="peephole", action="store_false", default=None,
             help="the plain LSTM cell, without peephole connections"),
    argument("--loss", choices=("ce", "mse"),
             help="ce: y holds integer classes (T, N); mse: real targets (T, N, O) "
                  "(default: ce for integer y, else mse)"),
    argument("--epochs", type=int, metavar="E", help="train until this many epochs in all "
             "(default 10)"),
    argument("--batch", type=int, metavar="B", help="sequences per mini-batch (default 32)"),
    argument("--lr", type=float, help="Adam's learning rate (default 0.001)"),
    argument("--val", type=float, metavar="FRACTION",
             help="hold out this fraction of the sequences to report val_loss"),
    argument("--seed", type=int, metavar="S", help="seed of the initialisation, split and "
             "shuffling (default: random, saved in the checkpoint)"),
    argument("--out", "-o", required=True, metavar="MODEL.npz",
             help="the trained network (net.save); the optimizer and loop state go next to it, "
                  "in MODEL.state.npz"),
    argument("--resume", action="store_true",
             help="continue from the checkpoint in --out and its .state.npz, bit for bit as if "
                  "never stopped"),
)
def _train(args):
    """Train an LSTM with a fully connected head on the sequences in DATA
    with lstmx.fit (Adam, shuffled mini-batches), and after every epoch write
    a checkpoint: the network to --out (net.save) and, next to it in
    MODEL.state.npz, the optimizer's state, the epoch, the random generator's
    state and the settings (no pickle). --resume continues from there to
    --epochs epochs in all and gives the same parameters, bit for bit, as a
    run that never stopped; the settings and DATA must be those of the
    checkpoint. The head has one output per class (ce) or per target feature
    (mse). A progress bar is drawn on stderr when it is a terminal.
    """
    from .training import train_files

    options = {name: getattr(args, name) for name in
               ("hidden", "layers", "bidirectional", "peephole", "loss", "batch", "lr", "val",
                "seed")}
    train_files(args.data, args.out, epochs=args.epochs, resume=args.resume, **options)
