"""The `hf-salt` command line: one module per subcommand, dispatched by `hf_salt.cli.main`."""
