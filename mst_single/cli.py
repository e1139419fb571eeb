"""`mst-single` command line: one entry point, one subcommand per task.

Each subcommand lives in its own module, which exposes ``add_arguments(parser)`` and ``run(args)``
(returning an exit code). Modules are imported lazily so that ``mst-single check-data`` does not pay
for importing torch and Lightning.
"""
import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS = {
    "demo-data": ("mst_single.demo", "write the embedded demo data set (raw/, mixed/, truth.json)"),
    "check-data": ("mst_single.checkdata", "check a raw/ + mixed/ folder and print a per-song table"),
    "targets": ("mst_single.targets", "fit each song's oracle(-prior) setting: the parameter targets fit reads"),
    "mix": ("mst_single.mix", "mix a raw vocal with a trained checkpoint"),
    "ablate": ("mst_single.ablate", "train and evaluate every variant of an experiment"),
    "compare": ("mst_single.compare", "mean ± std tables from results, runs or W&B; --check-same: did a rerun reproduce?"),
}
# Handed to LightningCLI as they are (see mst_single.train).
LIGHTNING_COMMANDS = ("fit", "validate", "test")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in LIGHTNING_COMMANDS:
        from mst_single.train import cli_main

        return cli_main(argv)

    parser = argparse.ArgumentParser(prog="mst-single", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in LIGHTNING_COMMANDS:
        sub.add_parser(name, help=f"Lightning {name} (-c configs/approach1.yaml ...; see --help)", add_help=False)
    modules = {}
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name in argv[:1]:  # only import the module that runs
            modules[name] = importlib.import_module(module)
            modules[name].add_arguments(p)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    from mst_single.errors import MstError

    try:
        return int(modules[args.command].run(args) or 0)
    except MstError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
