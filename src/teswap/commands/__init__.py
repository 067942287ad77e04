"""teswap subcommands: one module each, with `register(subparsers)` and `main(args) -> int`."""
