"""``crowdloop review`` and ``crowdloop reviewers``: the review desk, a web page where reviewers
correct the labels most likely wrong (``crowdloop/review_app.py``). Reference: docs/cli.md."""

from __future__ import annotations

import sys

import typer

from crowdloop.cli.annotation import _check_base_url
from crowdloop.cli.common import (
    app,
    console,
    directory_argument,
    err_console,
    listening_socket,
    one_line_errors,
    project_dir_of,
    project_option,
    serve,
)

reviewers_app = typer.Typer(help="Reviewers of the review desk (crowdloop review).", no_args_is_help=True)
app.add_typer(reviewers_app, name="reviewers")


@app.command()
@one_line_errors
def review(
    directory: str | None = directory_argument(),
    project_dir: str | None = project_option(),
    host: str = typer.Option("127.0.0.1", "--host", help="interface to listen on (keep 127.0.0.1 unless behind a proxy)"),
    port: int = typer.Option(8001, "--port", min=1, max=65535, help="TCP port to listen on"),
    top: int = typer.Option(20, "--top", min=1, max=500, help="items a page"),
    rank: str = typer.Option("both", "--rank", metavar="both|crowd|model", help="as crowdloop disputed ranks them"),
) -> None:
    """Serve the review desk: the labels most likely wrong, shown as annotators saw them; a click corrects one.

    Any vendor's labels; a correction applies from the next round's aggregation on, as with
    `crowdloop correct`. Reviewers need a link: `crowdloop reviewers add NAME -p DIR`."""
    from crowdloop.engine import Project
    from crowdloop.review_app import create_review_app, reviewers

    project = Project.open(project_dir_of(directory, project_dir))
    web = create_review_app(project, top=top, rank=rank)  # a bad --rank is refused before the port is taken
    sock = listening_socket(host, port)
    names = reviewers(project)
    err_console.print(f"crowdloop review: http://{host}:{port}/ for project {project.config.project!r}; reviewers: "
                      f"{', '.join(names) or 'none yet (crowdloop reviewers add NAME -p ...)'}", soft_wrap=True)
    serve(web, sock)


@reviewers_app.command("add")
@one_line_errors
def reviewers_add(
    name: str = typer.Argument(..., help="reviewer name: lowercase letters, digits, '_' or '-'"),
    project_dir: str | None = project_option(),
    url: str = typer.Option("http://127.0.0.1:8001", "--url", help="where `crowdloop review` is reachable"),
) -> None:
    """Create reviewer NAME and print their personal link (shown once; only a hash is stored)."""
    from crowdloop.engine import Project
    from crowdloop.review_app import add_reviewer

    _check_base_url("--url", url)  # before the token exists: it is shown once
    token = add_reviewer(Project.open(project_dir_of(None, project_dir)), name)
    err_console.print(f"review link for {name} (shown once, keep it private):")
    sys.stdout.write(f"{url.rstrip('/')}/?token={token}\n")


@reviewers_app.command("remove")
@one_line_errors
def reviewers_remove(
    name: str = typer.Argument(..., help="reviewer name to revoke"),
    project_dir: str | None = project_option(),
) -> None:
    """Revoke reviewer NAME's link (their corrections stay)."""
    from crowdloop.engine import Project
    from crowdloop.review_app import remove_reviewer

    remove_reviewer(Project.open(project_dir_of(None, project_dir)), name)
    console.print(f"removed {name}")


@reviewers_app.command("list")
@one_line_errors
def reviewers_list(project_dir: str | None = project_option()) -> None:
    """List reviewer names."""
    from crowdloop.engine import Project
    from crowdloop.review_app import reviewers

    for name in reviewers(Project.open(project_dir_of(None, project_dir))):
        sys.stdout.write(name + "\n")
