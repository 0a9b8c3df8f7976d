"""The ``lstmx`` command line (also ``python -m lstmx``).

    lstmx info                           versions, dtypes, scipy's BLAS, threads
    lstmx predict MODEL DATA --out Y.npy run a saved network on saved inputs

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

from . import __version__

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

_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


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
        "blas": _scipy_blas(),
        "threads": {
            "cpu_count": os.cpu_count(),
            "usable_cpus": usable,
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
    text = " ".join(str(blas[k]) for k in ("name", "version") if k in blas)
    if "has ilp64" in blas:
        text += ", ILP64" if blas["has ilp64"] else ", LP64"
    rows.append(("blas", text + " (scipy's, called through scipy.linalg.cython_blas)"))
    if "openblas configuration" in blas:
        rows.append(("", blas["openblas configuration"]))
    usable = threads["usable_cpus"]
    rows.append(("cpus", f"{threads['cpu_count']}"
                 + ("" if usable is None else f" ({usable} usable by this process)")))
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
    uses: OPENBLAS_NUM_THREADS, OMP_NUM_THREADS, MKL_NUM_THREADS, the CPU
    count, and the thread pools threadpoolctl sees if it is installed.

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
    from .persist import load

    net = load(args.model, batch_first=args.batch_first)
    x, lengths = _read_data(args.data)
    try:
        y = net.predict(x, lengths=lengths)
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{args.data}: {exc}") from None
    with open(args.out, "wb") as f:   # np.save(path) would append .npy
        np.save(f, y, allow_pickle=False)
    shape = "(" + ", ".join(str(n) for n in y.shape) + ")"
    print(f"{args.out}: y {shape} {y.dtype.name}")
