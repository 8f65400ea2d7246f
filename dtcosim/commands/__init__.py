"""One module per dtcosim subcommand, each with main(argv, prog) -> exit code."""
