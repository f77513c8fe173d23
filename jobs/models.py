"""The model registry: registered models with their versions, aliases, key metrics and lineage.

    python jobs/models.py list [NAME] --config configs/demo.yaml
    python jobs/models.py show models:/vqvae-demo@champion --config configs/demo.yaml
    python jobs/models.py show vqvae-demo --json --tracking-uri http://mlflow:5000
    python jobs/models.py promote vqvae-demo 3 --alias champion --config configs/demo.yaml

The store: --tracking-uri URI, or --config PATH (its mlflow.tracking_uri, else MLFLOW_TRACKING_URI,
else the sqlite file in its workdir), else MLFLOW_TRACKING_URI. `show` takes models:/NAME@ALIAS,
models:/NAME/VERSION, models:/NAME/latest or a bare NAME (every version).
"""
import argparse
import _repo  # noqa: F401  the repository on the import path, jobs/ off it

from pipeline.stages import models


def parse(argv: list[str] | None = None) -> dict:
    common = argparse.ArgumentParser(add_help=False)
    store = common.add_mutually_exclusive_group()
    store.add_argument("--tracking-uri", help="MLflow store, e.g. sqlite:///work/demo/mlflow.db or http://host:5000")
    store.add_argument("--config", help="experiment YAML whose MLflow store to read, e.g. configs/demo.yaml")
    common.add_argument("--json", dest="as_json", action="store_true", help="machine-readable output")

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", parents=[common], help="one row per registered version")
    listing.add_argument("name", nargs="?", help="only this model, e.g. vqvae-demo")
    showing = commands.add_parser("show", parents=[common], help="everything about a version")
    showing.add_argument("target", metavar="URI_OR_NAME", help="models:/NAME@ALIAS, models:/NAME/VERSION or NAME")
    promoting = commands.add_parser("promote", parents=[common], help="move an alias to a version")
    promoting.add_argument("name")
    promoting.add_argument("version", help="a version number or 'latest'")
    promoting.add_argument("--alias", default="champion", help="the alias to move (default: champion)")
    return vars(parser.parse_args(argv))


if __name__ == "__main__":
    args = parse()
    models.run(args.pop("command"), tracking_uri=args.pop("tracking_uri"), config=args.pop("config"),
               as_json=args.pop("as_json"), args=args)
