"""teswap subcommands: one module each, with `register(subparsers)` and `main(args) -> int`.

    args.py  the parser whose errors are one line and exit 2, and the shared argparse types
    quiet.py third-party progress bars and warnings off while a command prints (restored after)
    env.py   teswap env       run.py    teswap run       check.py    teswap check
    bench.py teswap bench     report.py teswap report    compare.py  teswap compare
"""
