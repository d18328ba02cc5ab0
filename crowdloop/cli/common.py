"""What every ``crowdloop`` command shares: the typer app, the consoles, the exit-code
mapping (docs/cli.md "Exit codes") and the ``--project-dir/-p`` convention."""

from __future__ import annotations

import errno
import functools
import socket
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from crowdloop.errors import ConfigError, CrowdloopError, is_transient

app = typer.Typer(
    name="crowdloop",
    help="Active-learning labeling: fewer human labels, better labels, fair pay.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


EXIT_OK, EXIT_BUG, EXIT_BAD_INPUT, EXIT_RETRY, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def shown(value: object) -> Text:
    """Text from outside the project (a worker id from a vendor's result file, a stop reason naming
    one) as it is: no rich markup, and a control character as its escape (``\\x1b``) so a worker id
    cannot restyle, hyperlink or clear the operator's terminal."""
    return Text("".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value)))


def listening_socket(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything is printed, registered or handed out: a host that
    is not this machine's, or a port in use, was uvicorn's log line and exit 3 ("worth a retry")
    after the start banner, and ``webhook`` had already registered its URL on Label Studio."""
    where = f"--host {host} --port {port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            raise  # the resolver is down: transient
        raise ConfigError(f"{where}: {host!r} is not an address or host name this machine resolves "
                          f"({exc.strerror}); use 127.0.0.1, or 0.0.0.0 for every interface") from None
    # As uvicorn binds a name: IPv4 unless the host is an IPv6 address ('localhost' is 127.0.0.1).
    ipv4 = [info for info in infos if info[0] == socket.AF_INET]
    family, kind, proto, _, address = ipv4[0] if ipv4 and ":" not in host else infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"{where}: port {port} is already in use on {host}; stop what holds it or pick "
                              "another --port") from None
        if exc.errno == errno.EACCES:
            raise ConfigError(f"{where}: not allowed to listen there ({exc.strerror}); ports below 1024 need "
                              "root: pick a port above 1023") from None
        if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
            raise ConfigError(f"{where}: {host} is not an address of this machine ({exc.strerror}); use "
                              "127.0.0.1, or 0.0.0.0 for every interface") from None
        raise
    return sock


def serve(app_: Any, sock: socket.socket) -> None:
    """Run an ASGI app with uvicorn on a socket from ``listening_socket``."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app_, log_level="warning"))
    server.run(sockets=[sock])


def print_error(message: str) -> None:
    err_console.print(Text(f"error: {' '.join(message.split())}", style="bold red"), soft_wrap=True)


def one_line_errors(fn: F) -> F:
    """Map failures to the documented exit codes; only a bug (exit 1) keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CrowdloopError as exc:
            if is_transient(exc):
                print_error(f"{exc} (an outside failure: worth a retry)")
                raise typer.Exit(EXIT_RETRY) from None
            print_error(str(exc))
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted; the project resumes where it stopped on the next run")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:
            if not is_transient(exc):
                raise  # a bug: exit 1 with the traceback
            print_error(f"{type(exc).__name__}: {exc} (an outside failure: worth a retry)")
            raise typer.Exit(EXIT_RETRY) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("crowdloop")
        except PackageNotFoundError:  # run from a source tree that was never installed
            found = "unknown (not installed; run: pip install -e .)"
        sys.stdout.write(f"crowdloop {found}\n")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the installed version and exit."),
) -> None:
    """Active-learning labeling: fewer human labels, better labels, fair pay.

    Exit codes: 0 ok, 2 bad input, 3 an outside failure worth a retry, 130 interrupted, 1 a bug.
    See docs/cli.md.
    """


PROJECT_DIR_HELP = "project store: a directory or s3://bucket/prefix"


CONFIG_PROJECT_DIR_HELP = "project store; default storage.url, else projects/<project>"


def project_option(help: str = PROJECT_DIR_HELP) -> Any:
    return typer.Option(None, "--project-dir", "-p", help=help)


def directory_argument(help: str = "project store (shorthand for --project-dir)") -> Any:
    """The positional DIR that commands older than ``--project-dir`` still accept."""
    return typer.Argument(None, metavar="DIR", help=help)


def project_dir_of(positional: str | None, option: str | None) -> str:
    """The project directory from ``--project-dir/-p`` or the positional shorthand (not both)."""
    if positional and option and positional != option:
        raise ConfigError(f"project directory given twice ({positional!r} and --project-dir {option!r}); "
                          "expected it once")
    found = option or positional
    if not found:
        raise ConfigError("missing project directory; expected --project-dir DIR (or -p DIR)")
    return found


def fmt_value(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def estimate_text(r: dict[str, Any]) -> str:
    """A round's accuracy estimated from the human-labeled audit, with its 95 % interval."""
    if r.get("estimated_accuracy") is None:
        return "–"
    return f"{r['estimated_accuracy']:.3f} [{fmt_value(r.get('ci_low'), 3)}, {fmt_value(r.get('ci_high'), 3)}]"


def rounds_table(state: dict[str, Any], title: str) -> Table:
    """One row per round; the imported seed labels, the audit's estimate and the models' agreement appear
    when the project has them (``pool.seed_labels``; a pool without answers has no test accuracy:
    ``evaluation``, ``stopping.stabilizing_predictions``)."""
    rounds = state["rounds"]
    imported = any(r.get("n_imported") for r in rounds)
    extra = [(name, key) for name, key in (("estimated (95 % CI)", "estimated_accuracy"), ("stability κ", "stability_kappa"))
             if any(r.get(key) is not None for r in rounds)]
    table = Table(title=title, title_justify="left")
    for name in ("round", "labeled", *(["imported"] if imported else []), "judgments", f"cost ({state['currency']})",
                 "accuracy", *(n for n, _ in extra)):
        table.add_column(name, justify="right")
    for r in rounds:
        cells = [estimate_text(r) if key == "estimated_accuracy" else fmt_value(r.get(key), 3) for _, key in extra]
        table.add_row(str(r["round"]), str(r["n_labeled"]), *([fmt_value(r.get("n_imported"))] if imported else []),
                      str(r["n_judgments"]), f"{r['cost']:.2f}", fmt_value(r["accuracy"]), *cells)
    return table


def agreement_reading(alpha: float | None) -> str:
    """Krippendorff's reading of alpha: ≥ 0.8 reliable, ≥ 0.667 tentative conclusions only."""
    if alpha is None:
        return "no variation: every judgment the same class"
    if alpha >= 0.8:
        return "reliable"
    if alpha >= 0.667:
        return "tentative"
    return "low: unclear guidelines, overlapping classes or careless workers; see crowdloop workers"


def agreement_lines(agreement: dict[str, Any] | None, store: str = "DIR") -> list[Text]:
    """What ``status`` says about ``annotator_agreement``: alpha and its reading, then the class pairs
    annotators split between more often than chance explains (``notable`` splits)."""
    if agreement is None:
        return []
    alpha = agreement["alpha"]
    rest = agreement.get("without_blocked")
    without = (f"; α {fmt_value(rest['alpha'], 2)} without the {rest['n_blocked']} blocked worker(s)"
               if rest and rest["alpha"] is not None else "")
    lines = [Text(f"annotators' agreement: α {fmt_value(alpha, 2)} ({agreement_reading(alpha)}), over "
                  f"{agreement['n_items']} items judged by several people at their first ask{without}")]
    notable = [s for s in agreement["splits"] if s.get("notable")][:3]
    if notable:
        pairs = ", ".join(f"{a} and {b} ({s['share']:.0%} of disagreements where chance gives {s['expected_share']:.0%}, "
                          f"{s['n_items']} items)" for s in notable for a, b in [s["classes"]])
        hint = "; a guidelines.classes note telling them apart may help" if alpha is not None and alpha < 0.8 else ""
        lines.append(Text(f"  they split most between {pairs}{hint}"))
        a, b = notable[0]["classes"]
        lines.append(Text(f"  review them: crowdloop disputed -p {store} --between {a},{b} (or the review desk's pair links)"))
    return lines


def growth_line(state: dict[str, Any]) -> str | None:
    """One line when the pool grew since the project started: what the early figures cover."""
    grown = state.get("pool_growth")
    if not grown:
        return None
    line = f"the pool grew: {grown['items_at_start']:,} items at the start, {grown['items_now']:,} now"
    if grown.get("estimate_covers"):
        line += (f"; the accuracy estimate is for the {grown['items_at_start']:,} it started with (its audit "
                 "reserve was drawn from them)")
    return line
