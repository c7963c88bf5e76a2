"""The `far-mesh` console script: one entry point whose subcommands live in the rooms they operate."""
