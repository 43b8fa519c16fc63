"""The `consortium` command."""

from __future__ import annotations

import typer

from consortium.cli import demo, identity, report, run, simulate, status, ui
from consortium.cli.audit_privacy import audit_app
from consortium.cli.bench import bench_app
from consortium.cli.chain import chain_app
from consortium.cli.consent import consent_app
from consortium.cli.model import model_app
from consortium.cli.new import new_app
from consortium.cli.store import app as store_app
from consortium.cli.zk import zk_app

app = typer.Typer(
    help="Consortium: decentralized, privacy-preserving machine learning with an auditable ledger.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
node_app = typer.Typer(help="Create and run a node.", no_args_is_help=True)
node_app.command("init")(identity.node_init)
node_app.command("start")(run.node_start)
node_app.command("reencrypt")(identity.node_reencrypt)
app.add_typer(node_app, name="node")
app.add_typer(identity.genesis_app, name="genesis", no_args_is_help=True)
run.run_app.command("status")(status.status)
run.run_app.command("watch")(status.watch)
app.add_typer(run.run_app, name="run")
app.add_typer(store_app, name="store", help="Put, get and verify content-addressed artifacts.")
app.add_typer(audit_app(run.audit), name="audit")
app.command("demo")(demo.demo)
app.command("simulate", help=simulate.HELP)(simulate.simulate)
app.command("report")(report.report)
app.command("ui")(ui.ui)
app.add_typer(bench_app, name="bench")
app.add_typer(chain_app, name="chain")
app.add_typer(consent_app, name="consent")
app.add_typer(model_app, name="model")
app.add_typer(new_app, name="new")
app.add_typer(zk_app, name="zk")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
