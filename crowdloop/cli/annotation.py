"""``crowdloop annotate``, ``annotators`` and ``webhook``: people answering tasks (the local
annotation app) and Label Studio telling Prefect when they did. Reference: docs/cli.md."""

from __future__ import annotations

import os
import sys

import typer

from crowdloop.cli.common import (
    app,
    console,
    err_console,
    listening_socket,
    one_line_errors,
    project_dir_of,
    project_option,
    serve,
)
from crowdloop.errors import ConfigError, StoreError

annotators_app = typer.Typer(help="Annotators of the local annotation app (vendor 'local').", no_args_is_help=True)
app.add_typer(annotators_app, name="annotators")


def _local_desk(project_dir: str):
    """The project at ``project_dir`` and its ``local`` vendor, or a one-line error."""
    from crowdloop import keys
    from crowdloop.engine import Project
    from crowdloop.storage import local_path, store_scheme
    from crowdloop.vendors.local import LocalVendor

    if store_scheme(project_dir) == "file" and not (local_path(project_dir) / keys.PROJECT).is_file():
        raise StoreError(f"project {project_dir}: not found (no {keys.PROJECT}); `crowdloop run CONFIG -p {project_dir}` "
                         "creates it — start it first: it dispatches round 0 and waits for the annotators you add")
    project = Project.open(project_dir)
    vendor = project.vendor
    vendor = getattr(vendor, "desk", vendor)  # a platform vendor whose participants label in this app (prolific)
    if not isinstance(vendor, LocalVendor):
        raise ConfigError(f"project {project_dir}: vendor.name is {project.config.vendor.name!r}; "
                          "the annotation app serves projects whose vendor is 'local'")
    return project, vendor


def _prefect_api_configured() -> bool:
    """Whether a Prefect server is configured (events go there; none: nothing is sent)."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


@app.command()
@one_line_errors
def annotate(
    directory: str | None = typer.Argument(None, metavar="DIR",
                                              help="project store whose vendor is 'local' (shorthand for --project-dir)"),
    project_dir: str | None = project_option("project store whose vendor is 'local'"),
    host: str = typer.Option("127.0.0.1", "--host", help="interface to listen on (keep 127.0.0.1 unless behind a proxy)"),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port to listen on"),
    events: bool | None = typer.Option(None, "--events/--no-events",
                                       help="emit a Prefect event on each answer (default: when PREFECT_API_URL is set)"),
) -> None:
    """Serve the annotation web app for the project's dispatched tasks."""
    from crowdloop.vendors.local_app import create_app, project_suggester

    project, vendor = _local_desk(project_dir_of(directory, project_dir))
    sock = listening_socket(host, port)
    on_answer = None
    if events or (events is None and _prefect_api_configured()):
        from crowdloop.flows.events import answer_emitter

        on_answer = answer_emitter(project.config.project, vendor)
    web = create_app(vendor, suggest=project_suggester(project), project=project.config.project, on_answer=on_answer)
    names = vendor.annotators()
    err_console.print(f"crowdloop annotate: http://{host}:{port}/ for project {project.config.project!r}; "
                      f"annotators: {', '.join(names) or 'none yet (crowdloop annotators add NAME --project-dir ...)'}"
                      f"{'; answer events to Prefect' if on_answer else ''}",
                      soft_wrap=True)
    serve(web, sock)


@app.command()
@one_line_errors
def webhook(
    project_dir: str | None = project_option("project store whose vendor is 'label_studio'"),
    host: str = typer.Option("127.0.0.1", "--host", help="interface to listen on"),
    port: int = typer.Option(8787, "--port", min=1, max=65535, help="TCP port to listen on"),
    public_url: str | None = typer.Option(None, "--public-url",
                                          help="where Label Studio reaches this receiver; default http://HOST:PORT"),
    register: bool = typer.Option(True, "--register/--no-register",
                                  help="create (or update) the webhook on the project's Label Studio project"),
) -> None:
    """Receive Label Studio's annotation webhooks and emit Prefect events (the collect trigger listens).

    The shared secret Label Studio sends is CROWDLOOP_WEBHOOK_SECRET (a fresh one when unset).
    """
    import secrets as random_secrets

    from crowdloop.engine import Project

    if public_url is not None:
        _check_base_url("--public-url", public_url)
    project_dir = project_dir_of(None, project_dir)
    project = Project.open(project_dir)
    if project.config.vendor.name != "label_studio":
        raise ConfigError(f"project {project_dir}: vendor.name is {project.config.vendor.name!r}; "
                          "the webhook receiver serves projects whose vendor is 'label_studio'")
    if not _prefect_api_configured():
        raise ConfigError("crowdloop webhook emits Prefect events: set PREFECT_API_URL to the Prefect server")
    from crowdloop.flows.events import label_studio_receiver

    secret = os.environ.get("CROWDLOOP_WEBHOOK_SECRET")
    if not secret and not register:
        raise ConfigError("--no-register: set CROWDLOOP_WEBHOOK_SECRET to the secret of the webhook you register in "
                          "Label Studio (header Authorization: Bearer <secret>)")
    secret = secret or random_secrets.token_urlsafe(32)  # registered below, never printed
    sock = listening_socket(host, port)
    url = f"{(public_url or f'http://{host}:{port}').rstrip('/')}/label-studio"
    if register:
        project.vendor.ensure_webhook(url, headers={"Authorization": f"Bearer {secret}"})
    err_console.print(f"crowdloop webhook: {url} for project {project.config.project!r}"
                      f"{' (registered on Label Studio)' if register else ''}", soft_wrap=True)
    serve(label_studio_receiver(project.config.project, secret=secret), sock)


def _check_base_url(option: str, url: str) -> None:
    """A base URL others will open or call: http(s), a host, nothing after the path. 'not a url' was
    printed as 'not a url/?token=...' after the annotator's one-time token had been issued."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname or parsed.query or parsed.fragment \
            or any(c.isspace() for c in url):
        raise ConfigError(f"{option} {url!r}: expected an http(s) base URL such as http://127.0.0.1:8000 or "
                          "https://label.example.org/app (no query, no fragment)")


@annotators_app.command("add")
@one_line_errors
def annotators_add(
    name: str = typer.Argument(..., help="annotator name: lowercase letters, digits, '_' or '-'"),
    project_dir: str | None = project_option("project store whose vendor is 'local'"),
    url: str = typer.Option("http://127.0.0.1:8000", "--url", help="where `crowdloop annotate` is reachable"),
) -> None:
    """Create annotator NAME and print their personal link (shown once; only a hash is stored)."""
    _check_base_url("--url", url)  # before the token exists: it is shown once
    _, vendor = _local_desk(project_dir_of(None, project_dir))
    token = vendor.add_annotator(name)
    err_console.print(f"personal link for {name} (shown once, keep it private):")
    sys.stdout.write(f"{url.rstrip('/')}/?token={token}\n")


@annotators_app.command("remove")
@one_line_errors
def annotators_remove(
    name: str = typer.Argument(..., help="annotator name to revoke"),
    project_dir: str | None = project_option("project store whose vendor is 'local'"),
) -> None:
    """Revoke annotator NAME's link (their answers stay)."""
    _, vendor = _local_desk(project_dir_of(None, project_dir))
    vendor.remove_annotator(name)
    console.print(f"removed {name}")


@annotators_app.command("list")
@one_line_errors
def annotators_list(
    project_dir: str | None = project_option("project store whose vendor is 'local'"),
) -> None:
    """List annotator names."""
    _, vendor = _local_desk(project_dir_of(None, project_dir))
    for name in vendor.annotators():
        sys.stdout.write(name + "\n")
