"""The Typer app and what every command shares: error handling, exit codes, output."""

import functools
import inspect
import json
import os
import signal
import sys
import threading
import traceback
from contextlib import ExitStack, contextmanager
from typing import Annotated, Any, Callable, Iterator, TextIO

import pandas as pd
import typer
from rich.markup import escape
from rich.table import Table

from cpt import __version__
from cpt import dist
from cpt.console import console, setup
from cpt.errors import CptError
from cpt.io import FULL, IN_THE_WAY, REFUSED, write_refused
from cpt.methods import METHODS

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


class Stopped(KeyboardInterrupt):
    """SIGTERM (what `timeout`, `kill` and job schedulers send) or SIGHUP (the terminal went away),
    raised like Ctrl-C's KeyboardInterrupt so that every cleanup Ctrl-C runs runs for them too."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum: int, frame: Any) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second one while cleaning up ends the process at once
    raise Stopped(signum)


@contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """While a command runs, SIGTERM and SIGHUP interrupt it as Ctrl-C does (checkpoint kept,
    status "interrupted", temp files removed, exit 2). A signal the caller ignores (`nohup`) or
    handles itself stays as it was."""
    installed = {}
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) == signal.SIG_DFL:
                installed[sig] = signal.signal(sig, _stop)
    try:
        yield
    finally:
        for sig, previous in installed.items():
            signal.signal(sig, previous)


# options several commands share, declared once
JsonOut = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", help="No progress bars or info messages.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cpt {__version__}")
        raise typer.Exit()


def new_app() -> typer.Typer:
    """An empty `cpt` app: its help lists the registered methods, and it has --version."""
    app = typer.Typer(
        name="cpt",
        help=f"Prompt tuning of CLIP from the shell. Methods: {', '.join(METHODS)} (`cpt methods` describes them). "
             "Tasks: your image folders or label files, or the built-in toy world (`cpt data`).",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                   help="Print cpt's version and exit.")] = False) -> None:
        """Prompt tuning of CLIP from the shell."""

    return app


def plain_help(app: typer.Typer) -> None:
    """Help texts are plain text: escape what rich would read as markup (`[default: ...]`,
    `train/ [val/] test/`), once per declaration, in every command's options and arguments."""
    for info in app.registered_commands:
        for param in inspect.signature(info.callback).parameters.values():
            for meta in getattr(param.annotation, "__metadata__", ()):
                if isinstance(meta, typer.models.ParameterInfo) and meta.help and not getattr(meta, "plain", False):
                    meta.help, meta.plain = escape(meta.help), True


app = new_app()  # the commands other modules register; cpt_cli.main adds `cpt fit` to a fresh copy


def command(fn: Callable[..., Any] | None = None, *, distributed: bool = False) -> Any:
    """Map outcomes to exit codes: 0 ok, 2 bad input or interrupted (Ctrl-C, SIGTERM, SIGHUP; one
    paragraph), 1 a bug (with its traceback).

    Under torchrun (WORLD_SIZE > 1) a `distributed` command (fit, eval, predict) joins the other
    processes, rank 0 alone prints, and the others print only a bug's traceback; any other command
    runs in each process as it would alone (`cpt sweep` takes a shard per rank).
    """
    if fn is None:
        return functools.partial(command, distributed=distributed)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not distributed or not dist.launched():
            return _run(fn, args, kwargs)
        with _rank_output() as bug_stream, ExitStack() as joined:
            _run(lambda **_: joined.enter_context(dist.session()), (), kwargs, bug_stream)  # cannot join: exit 2
            try:
                return _run(fn, args, kwargs, bug_stream)  # rank 0 prints what stopped it, then leaves the group
            finally:
                dist.wait_for_main()

    return wrapper


@contextmanager
def _rank_output() -> Iterator[TextIO | None]:
    """Ranks other than 0 print nothing; a bug's traceback still reaches their original stderr."""
    saved = dist.quiet_other_ranks()
    stream = os.fdopen(saved, "w") if saved is not None else None
    try:
        yield stream
    finally:
        if stream is not None:
            stream.close()


def _run(fn: Callable[..., Any], args: tuple, kwargs: dict, bug_stream: TextIO | None = None) -> Any:
    """`fn(*args, **kwargs)` with its outcome mapped to an exit code; `bug_stream`: a quiet rank's stderr."""
    setup(quiet=bool(kwargs.get("quiet")) or bug_stream is not None)
    try:
        with stop_signals_interrupt():
            return fn(*args, **kwargs)
    except CptError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt as exc:
        how = f" by {exc.args[0]}" if isinstance(exc, Stopped) else ""
        console.print(
            f"[bold red]interrupted{how}:[/] nothing already written was lost. A `cpt fit` run keeps the "
            "checkpoint of its last finished epoch: continue it with `cpt fit --resume RUN`.",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2) from None
    except BrokenPipeError:  # the reader went away (`cpt predict ... | head`): stop quietly
        _silence_stdout()
        raise typer.Exit(0) from None
    except typer.Exit:
        raise
    except OSError as exc:  # permissions, a read-only or full disk: the user's to fix, not a bug
        if exc.errno in FULL:
            message = str(write_refused(exc.filename or "a file", exc))
        elif exc.errno in REFUSED:
            fix = "Choose" if exc.errno in IN_THE_WAY else "Make it accessible, or choose"
            message = (f"cpt cannot use {exc.filename or 'a file it needs'}: {REFUSED[exc.errno]}. {fix} "
                       "another place (--out, --cache-dir or $CPT_CACHE).")
        else:
            _internal_error(bug_stream)
        console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except Exception as exc:
        if dist.peer_lost(exc):  # another process of the job stopped first: its message says why
            console.print("[bold red]error:[/] another process of this torchrun job stopped; its message (or "
                          "torchrun's report) says why.", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        _internal_error(bug_stream)  # a bug: show everything


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so flushing what is still buffered at exit cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a real file (a test runner's buffer)
        pass


def _internal_error(bug_stream: TextIO | None = None) -> None:
    """A bug: its traceback (on a quiet rank, to the stderr it had), exit 1."""
    if bug_stream is not None:
        bug_stream.write(f"rank {os.environ.get('RANK')}: internal error (a bug in cpt): please report it with this traceback.\n")
        traceback.print_exc(file=bug_stream)
        bug_stream.flush()
        raise typer.Exit(1) from None
    traceback.print_exc(file=sys.stderr)
    console.print("[bold red]internal error[/] (a bug in cpt): please report it with the traceback above.")
    raise typer.Exit(1) from None


def emit_json(obj: Any) -> None:
    """Machine-readable result on stdout."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def show_metrics(metrics: pd.DataFrame, title: str) -> None:
    """A task x metric table on stderr; metric x task when there are more metrics than fit across
    a terminal (retrieval's two directions)."""
    wide = metrics.pivot_table(index="task", columns="metric", values="value", sort=False)

    def cell(metric: str, v: float) -> str:
        return "-" if pd.isna(v) else f"{v:.0f}" if metric.startswith("n_") else f"{v:.2f}"

    table = Table(title=title)
    if len(wide.columns) > 8:
        table.add_column("metric")
        for task in wide.index:
            table.add_column(str(task), justify="right")
        for metric in wide.columns:
            table.add_row(str(metric), *(cell(metric, v) for v in wide[metric]))
    else:
        table.add_column("task")
        for col in wide.columns:
            table.add_column(col, justify="right")
        for task, row in wide.iterrows():
            table.add_row(str(task), *(cell(col, v) for col, v in row.items()))
    console.print(table)
